-- The SQL surface of the released bismarck 0.1.0 (sql/bismarck.sql at that version), kept so
-- that tests/test_security.py can check the hand-written migration to 0.2.0 on real 0.1.0 data.
-- bismarck: in-database SGD in the style of Bismarck (Feng, Kumar, Recht, Ré, SIGMOD 2012).
--
-- This file is the extension's documented SQL surface. The install script
-- bismarck--<version>.sql is this file with a generated preamble at the top of every PL/Python
-- body: the engine's Python sources (src/bismarckpy/) and bismarck_engine(GD), which imports them
-- once per backend under the key BISMARCK_ENGINE. PL/Python cannot run SQL in a parallel worker,
-- so every function carries its own copy. Every PL/Python body is one call into the engine;
-- write each as "LANGUAGE plpython3u ... AS $$" and a newline (the build looks for that).
--
-- Sections: registry tables; views; public functions; private functions; aggregates.

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION bismarck CASCADE" to load this file. \quit

------------------------------------------------------------------------------------------------
-- Registry tables (user data: kept across upgrades, dumped by pg_dump)
------------------------------------------------------------------------------------------------

CREATE TABLE bismarck.models (
    model_name    text        NOT NULL,
    version       integer     NOT NULL,
    loss          text        NOT NULL,
    source        text        NOT NULL,
    label         text        NOT NULL,
    features      text[]      NOT NULL,
    array_feature boolean     NOT NULL,
    coef          float8[]    NOT NULL,
    intercept     float8      NOT NULL,
    classes       float8[],
    params        jsonb       NOT NULL,
    metrics       jsonb       NOT NULL,
    fitted        jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version)
);
COMMENT ON TABLE bismarck.models IS
    'Trained models, one row per version: coefficients in the original feature units, '
    'hyper-parameters (params), training metrics and the standardisation used (fitted).';
SELECT pg_catalog.pg_extension_config_dump('bismarck.models', '');

CREATE TABLE bismarck._training_run (
    run_id      bigserial   PRIMARY KEY,
    model_name  text        NOT NULL,
    source      text        NOT NULL,
    params      jsonb       NOT NULL,
    status      text        NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    version     integer,
    message     text,
    backend_pid integer     NOT NULL DEFAULT pg_backend_pid(),
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
);
COMMENT ON TABLE bismarck._training_run IS
    'Private: one row per training run (see bismarck.training_history).';
SELECT pg_catalog.pg_extension_config_dump('bismarck._training_run', '');
SELECT pg_catalog.pg_extension_config_dump('bismarck._training_run_run_id_seq', '');

CREATE TABLE bismarck._training_epoch (
    run_id          bigint      NOT NULL REFERENCES bismarck._training_run ON DELETE CASCADE,
    epoch           integer     NOT NULL,
    train_loss      float8,
    validation_loss float8,
    learning_rate   float8,
    rows            bigint,
    seconds         float8,
    workers         integer,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run_id, epoch)
);
COMMENT ON TABLE bismarck._training_epoch IS
    'Private: per-epoch losses of each run (see bismarck.training_history).';
SELECT pg_catalog.pg_extension_config_dump('bismarck._training_epoch', '');

CREATE TABLE bismarck.packed_tables (
    packed_table  regclass    PRIMARY KEY,
    source        text        NOT NULL,
    label         text        NOT NULL,
    features      text[]      NOT NULL,
    array_feature boolean     NOT NULL,
    n_features    integer     NOT NULL,
    dtype         text        NOT NULL,
    block_size    integer     NOT NULL,
    rows          bigint      NOT NULL,
    skipped_rows  bigint      NOT NULL,
    label_values  float8[],
    seed          bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE bismarck.packed_tables IS
    'Packed tables written by bismarck.pack: their source, label, features and block layout. '
    'train_glm recognises them as sources and reuses their blocks.';
SELECT pg_catalog.pg_extension_config_dump('bismarck.packed_tables', '');

------------------------------------------------------------------------------------------------
-- Views
------------------------------------------------------------------------------------------------

CREATE VIEW bismarck.training_history AS
SELECT r.model_name,
       r.version,
       r.run_id,
       CASE WHEN r.status = 'running' AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_stat_activity a WHERE a.pid = r.backend_pid)
            THEN 'interrupted' ELSE r.status END AS status,
       e.epoch,
       e.train_loss,
       e.validation_loss,
       e.learning_rate,
       e.rows,
       e.seconds,
       e.workers,
       e.recorded_at
FROM bismarck._training_run r
JOIN bismarck._training_epoch e USING (run_id);
COMMENT ON VIEW bismarck.training_history IS
    'Per-epoch training and validation loss, learning rate, rows, seconds and parallel workers '
    'merged (0: a serial scan) of every run; version is set once the run has stored its model.';

------------------------------------------------------------------------------------------------
-- Public functions
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck.train_glm(
    source              text,
    label               text,
    features            text[],
    INOUT model_name    text     DEFAULT NULL,
    loss                text     DEFAULT NULL,
    penalty             text     DEFAULT NULL,
    alpha               float8   DEFAULT NULL,
    l1_ratio            float8   DEFAULT NULL,
    fit_intercept       boolean  DEFAULT NULL,
    standardize         boolean  DEFAULT NULL,
    max_epochs          integer  DEFAULT NULL,
    tol                 float8   DEFAULT NULL,
    n_iter_no_change    integer  DEFAULT NULL,
    learning_rate       text     DEFAULT NULL,
    eta0                float8   DEFAULT NULL,
    power_t             float8   DEFAULT NULL,
    batch_size          integer  DEFAULT NULL,
    shuffle             text     DEFAULT NULL,
    packed              boolean  DEFAULT NULL,
    block_size          integer  DEFAULT NULL,
    dtype               text     DEFAULT NULL,
    seed                bigint   DEFAULT NULL,
    validation_fraction float8   DEFAULT NULL,
    parallel            integer  DEFAULT NULL,
    OUT version         integer,
    OUT epochs          integer,
    OUT converged       boolean,
    OUT train_loss      float8,
    OUT validation_loss float8,
    OUT seconds         float8)
RETURNS record
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb;
    r jsonb;
BEGIN
    result := bismarck._train_glm(jsonb_build_object(
        'source', source, 'label', label, 'features', features,
        'model_name', coalesce(model_name, source),
        'loss', loss, 'penalty', penalty, 'alpha', alpha, 'l1_ratio', l1_ratio,
        'fit_intercept', fit_intercept, 'standardize', standardize, 'max_epochs', max_epochs,
        'tol', tol, 'n_iter_no_change', n_iter_no_change, 'learning_rate', learning_rate,
        'eta0', eta0, 'power_t', power_t, 'batch_size', batch_size, 'shuffle', shuffle,
        'packed', packed, 'block_size', block_size, 'dtype', dtype, 'seed', seed, 'validation_fraction', validation_fraction, 'parallel', parallel));
    PERFORM bismarck._raise_if_error(result);
    r := result -> 'ok';
    model_name := r ->> 'model_name';
    version := (r ->> 'version')::integer;
    epochs := (r ->> 'epochs')::integer;
    converged := (r ->> 'converged')::boolean;
    train_loss := (r ->> 'train_loss')::float8;
    validation_loss := (r ->> 'validation_loss')::float8;
    seconds := (r ->> 'seconds')::float8;
END
$$;
COMMENT ON FUNCTION bismarck.train_glm(text, text, text[], text, text, text, float8, float8,
    boolean, boolean, integer, float8, integer, text, float8, float8, integer, text, boolean,
    integer, text, bigint, float8, integer) IS
    'Train a generalized linear model (loss logistic, squared or hinge) with SGD epochs run as '
    'an aggregate, and store it as the next version of model_name (default: the source name). '
    'features is a list of numeric columns or one float8[] column. NULL options take defaults.';

CREATE FUNCTION bismarck.pack(
    source           text,
    label            text,
    features         text[],
    INOUT packed_table text,
    block_size       integer DEFAULT NULL,
    dtype            text    DEFAULT NULL,
    seed             bigint  DEFAULT NULL,
    OUT blocks       bigint,
    OUT rows         bigint,
    OUT skipped_rows bigint,
    OUT seconds      float8)
RETURNS record
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb;
    r jsonb;
BEGIN
    result := bismarck._pack(jsonb_build_object(
        'source', source, 'label', label, 'features', features, 'packed_table', packed_table,
        'block_size', block_size, 'dtype', dtype, 'seed', seed));
    PERFORM bismarck._raise_if_error(result);
    r := result -> 'ok';
    packed_table := r ->> 'packed_table';
    blocks := (r ->> 'blocks')::bigint;
    rows := (r ->> 'rows')::bigint;
    skipped_rows := (r ->> 'skipped_rows')::bigint;
    seconds := (r ->> 'seconds')::float8;
END
$$;
COMMENT ON FUNCTION bismarck.pack(text, text, text[], text, integer, text, bigint) IS
    'Write a shuffled, packed copy of a table (blocks of block_size rows as float32 or float64 '
    'numpy buffers) that train_glm can use as its source, again and again, for any loss.';

CREATE FUNCTION bismarck.predict(model text, x float8[], version integer DEFAULT NULL)
RETURNS float8
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m bismarck.models;
BEGIN
    m := bismarck._model(model, version);
    IF x IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN bismarck._link(m.loss, bismarck._margin(m, x));
END
$$;
COMMENT ON FUNCTION bismarck.predict(text, float8[], integer) IS
    'Score one feature vector with a stored model (latest version unless given): probability '
    'of the positive class for logistic, the value for squared, the signed margin for hinge.';

CREATE FUNCTION bismarck.predict_class(model text, x float8[], version integer DEFAULT NULL)
RETURNS float8
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m bismarck.models;
BEGIN
    m := bismarck._model(model, version);
    IF m.classes IS NULL THEN
        RAISE EXCEPTION 'model "%" is a regression model', m.model_name
            USING ERRCODE = '22023',
                  HINT = 'predict_class needs a classifier (loss logistic or hinge); use predict.';
    END IF;
    IF x IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN CASE WHEN bismarck._margin(m, x) >= 0 THEN m.classes[2] ELSE m.classes[1] END;
END
$$;
COMMENT ON FUNCTION bismarck.predict_class(text, float8[], integer) IS
    'The predicted class of a classifier in the label''s own coding (0/1 or -1/+1; booleans '
    'come back as 0/1).';

CREATE FUNCTION bismarck.evaluate(model text, source text, version integer DEFAULT NULL)
RETURNS TABLE (metric text, value float8)
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb;
BEGIN
    result := bismarck._evaluate(model, source, version);
    PERFORM bismarck._raise_if_error(result);
    RETURN QUERY SELECT r.metric, r.value
                   FROM jsonb_to_recordset(result -> 'ok') AS r(metric text, value float8);
END
$$;
COMMENT ON FUNCTION bismarck.evaluate(text, text, integer) IS
    'Metrics of a stored model on a table or view holding its label and feature columns: '
    'accuracy, precision, recall, f1, roc_auc, log_loss (classifiers); rmse, mae, r2 (squared).';

CREATE FUNCTION bismarck.delete_model(model text, version integer DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM bismarck._model(model, version);
    DELETE FROM bismarck.models m
     WHERE m.model_name = model
       AND (delete_model.version IS NULL OR m.version = delete_model.version);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION bismarck.delete_model(text, integer) IS
    'Delete one version of a model, or all its versions when version is NULL; returns how many.';

------------------------------------------------------------------------------------------------
-- Private functions
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck._raise_if_error(result jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    e jsonb := result -> 'error';
BEGIN
    IF e IS NULL THEN
        RETURN;
    ELSIF e ->> 'detail' IS NOT NULL AND e ->> 'hint' IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = e ->> 'message', ERRCODE = e ->> 'sqlstate',
            DETAIL = e ->> 'detail', HINT = e ->> 'hint';
    ELSIF e ->> 'detail' IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = e ->> 'message', ERRCODE = e ->> 'sqlstate',
            DETAIL = e ->> 'detail';
    ELSIF e ->> 'hint' IS NOT NULL THEN
        RAISE EXCEPTION USING MESSAGE = e ->> 'message', ERRCODE = e ->> 'sqlstate',
            HINT = e ->> 'hint';
    ELSE
        RAISE EXCEPTION USING MESSAGE = e ->> 'message', ERRCODE = e ->> 'sqlstate';
    END IF;
END
$$;
COMMENT ON FUNCTION bismarck._raise_if_error(jsonb) IS
    'Private: re-raises an error envelope returned by the engine as a clean PostgreSQL error.';

CREATE FUNCTION bismarck._train_glm(options jsonb) RETURNS jsonb
LANGUAGE plpython3u AS $$
import json
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.train_glm(plpy, json.loads(options))
$$;
COMMENT ON FUNCTION bismarck._train_glm(jsonb) IS
    'Private: runs the training loop inside this backend; returns a JSON result or error.';

CREATE FUNCTION bismarck._pack(options jsonb) RETURNS jsonb
LANGUAGE plpython3u AS $$
import json
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.pack_table(plpy, json.loads(options))
$$;
COMMENT ON FUNCTION bismarck._pack(jsonb) IS
    'Private: writes and registers a packed table; returns a JSON result or error.';

CREATE FUNCTION bismarck._evaluate(model text, source text, version integer) RETURNS jsonb
LANGUAGE plpython3u AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.evaluate(plpy, model, source, version)
$$;
COMMENT ON FUNCTION bismarck._evaluate(text, text, integer) IS
    'Private: computes evaluation metrics in SQL; returns a JSON result or error.';

CREATE FUNCTION bismarck._model(model text, version integer DEFAULT NULL)
RETURNS bismarck.models
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    m bismarck.models;
BEGIN
    SELECT * INTO m FROM bismarck.models AS r
     WHERE r.model_name = model AND (_model.version IS NULL OR r.version = _model.version)
     ORDER BY r.version DESC LIMIT 1;
    IF NOT FOUND THEN
        IF version IS NOT NULL AND EXISTS (SELECT 1 FROM bismarck.models r
                                            WHERE r.model_name = model) THEN
            RAISE EXCEPTION 'model "%" has no version %', model, version
                USING ERRCODE = '42704',
                      HINT = format('List its versions with: SELECT version FROM '
                                    'bismarck.models WHERE model_name = %L.', model);
        END IF;
        RAISE EXCEPTION 'model "%" does not exist', model
            USING ERRCODE = '42704',
                  HINT = 'List the trained models with: SELECT model_name, version FROM '
                         'bismarck.models.';
    END IF;
    RETURN m;
END
$$;
COMMENT ON FUNCTION bismarck._model(text, integer) IS
    'Private: the registry row of a model (latest version unless given), or a clear error.';

CREATE FUNCTION bismarck._margin(m bismarck.models, x float8[]) RETURNS float8
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF cardinality(x) <> cardinality(m.coef) THEN
        RAISE EXCEPTION 'feature vector has % elements but model "%" has % features',
            cardinality(x), m.model_name, cardinality(m.coef)
            USING ERRCODE = '22000',
                  HINT = 'Pass the features in the order of bismarck.models.features.';
    END IF;
    RETURN m.intercept + (SELECT sum(c * v) FROM unnest(m.coef, x) AS t(c, v));
END
$$;
COMMENT ON FUNCTION bismarck._margin(bismarck.models, float8[]) IS
    'Private: the linear score x·coef + intercept in original feature units.';

CREATE FUNCTION bismarck._link(loss text, z float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN loss = 'logistic'
                THEN 1.0 / (1.0 + exp(-greatest(least(z, 700), -700)))
                ELSE z END
$$;
COMMENT ON FUNCTION bismarck._link(text, float8) IS
    'Private: maps a linear score to the prediction (sigmoid for logistic, identity otherwise).';

CREATE FUNCTION bismarck._store_model(
    model_name text, source text, label text, loss text, features text[],
    array_feature boolean, coef float8[], intercept float8, classes float8[], params jsonb,
    metrics jsonb, fitted jsonb)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('bismarck.models'), hashtext(model_name));
    SELECT coalesce(max(m.version), 0) + 1 INTO v
      FROM bismarck.models m WHERE m.model_name = _store_model.model_name;
    INSERT INTO bismarck.models (model_name, version, loss, source, label, features,
                                 array_feature, coef, intercept, classes, params, metrics, fitted)
    VALUES (model_name, v, loss, source, label, features, array_feature, coef, intercept,
            classes, params, metrics, fitted);
    RETURN v;
END
$$;
COMMENT ON FUNCTION bismarck._store_model(text, text, text, text, text[], boolean, float8[],
    float8, float8[], jsonb, jsonb, jsonb) IS
    'Private: stores a trained model as the next version of its name (serialised per name).';

------------------------------------------------------------------------------------------------
-- Aggregates: one SGD epoch, feature moments
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck._glm_step(state bytea, x bytea, y float8, init bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.glm_transition(plpy, state, x, y, init)
$$;
COMMENT ON FUNCTION bismarck._glm_step(bytea, bytea, float8, bytea) IS
    'Private: transition of _glm_epoch: one tuple''s loss and gradient, a step per batch_size; '
    'x is a float8[] in its in-memory form (_float8_array_bytes), which costs no conversion.';

CREATE FUNCTION bismarck._glm_merge(a bytea, b bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.glm_merge(plpy, a, b)
$$;
COMMENT ON FUNCTION bismarck._glm_merge(bytea, bytea) IS
    'Private: combine function of _glm_epoch: row-weighted model averaging of partial states.';

CREATE FUNCTION bismarck._glm_final(state bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.glm_finalize(plpy, state)
$$;
COMMENT ON FUNCTION bismarck._glm_final(bytea) IS
    'Private: final function of _glm_epoch: applies the pending batch, returns the state.';

CREATE AGGREGATE bismarck._glm_epoch(x bytea, y float8, init bytea) (
    SFUNC = bismarck._glm_step,
    STYPE = bytea,
    COMBINEFUNC = bismarck._glm_merge,
    FINALFUNC = bismarck._glm_final,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._glm_epoch(bytea, float8, bytea) IS
    'Private: one SGD epoch of a GLM over rows (features as _float8_array_bytes, coded label), '
    'starting from state init.';

CREATE FUNCTION bismarck._moments_step(state bytea, x bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.moments_transition(plpy, state, x)
$$;
COMMENT ON FUNCTION bismarck._moments_step(bytea, bytea) IS
    'Private: transition of _moments (Welford update).';

CREATE FUNCTION bismarck._moments_merge(a bytea, b bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.moments_merge(plpy, a, b)
$$;
COMMENT ON FUNCTION bismarck._moments_merge(bytea, bytea) IS
    'Private: combine function of _moments (Chan''s parallel variance).';

CREATE AGGREGATE bismarck._moments(x bytea) (
    SFUNC = bismarck._moments_step,
    STYPE = bytea,
    COMBINEFUNC = bismarck._moments_merge,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._moments(bytea) IS
    'Private: per-feature count, mean and sum of squared deviations of rows (features as '
    '_float8_array_bytes), for standardisation.';

------------------------------------------------------------------------------------------------
-- Packed storage: many rows per bytea block, one numpy mini-batch step per block
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck._float8_array_bytes(float8[]) RETURNS bytea
LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE AS 'byteasend';
COMMENT ON FUNCTION bismarck._float8_array_bytes(float8[]) IS
    'Private: an array''s in-memory form (20-byte header for 1-D without NULLs, then raw '
    'little-endian float8), about ten times cheaper than array_send; _pack_block checks it.';

CREATE FUNCTION bismarck._pack_block(rows bytea, labels bytea, d integer, dtype text,
                                     seed bigint) RETURNS bytea
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL SAFE AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.pack_block(plpy, rows, labels, d, dtype, seed)
$$;
COMMENT ON FUNCTION bismarck._pack_block(bytea, bytea, integer, text, bigint) IS
    'Private: concatenated _float8_array_bytes of a block''s rows and of its labels -> one '
    'n x (1 + d) matrix (label, features) of dtype float32 or float64, rows in seeded random order.';

CREATE FUNCTION bismarck._glm_step_block(state bytea, block bytea, init bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.glm_transition_block(plpy, state, block, init)
$$;
COMMENT ON FUNCTION bismarck._glm_step_block(bytea, bytea, bytea) IS
    'Private: transition of _glm_epoch_packed: the rows of one packed block, a step per batch_size.';

CREATE AGGREGATE bismarck._glm_epoch_packed(block bytea, init bytea) (
    SFUNC = bismarck._glm_step_block,
    STYPE = bytea,
    COMBINEFUNC = bismarck._glm_merge,
    FINALFUNC = bismarck._glm_final,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._glm_epoch_packed(bytea, bytea) IS
    'Private: one SGD epoch of a GLM over packed blocks, starting from state init.';

CREATE FUNCTION bismarck._moments_step_block(state bytea, block bytea, d integer,
                                             itemsize integer) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.moments_transition_block(plpy, state, block, d, itemsize)
$$;
COMMENT ON FUNCTION bismarck._moments_step_block(bytea, bytea, integer, integer) IS
    'Private: transition of _moments_packed: a whole block''s count, means and squared deviations.';

CREATE AGGREGATE bismarck._moments_packed(block bytea, d integer, itemsize integer) (
    SFUNC = bismarck._moments_step_block,
    STYPE = bytea,
    COMBINEFUNC = bismarck._moments_merge,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._moments_packed(bytea, integer, integer) IS
    'Private: per-feature moments over packed blocks, for standardisation.';
