-- bismarck: in-database SGD in the style of Bismarck (Feng, Kumar, Recht, Ré, SIGMOD 2012).
--
-- This file is the extension's documented SQL surface. The install script
-- bismarck--<version>.sql is this file with a generated preamble at the top of every PL/Python
-- body: the engine's Python sources (src/bismarckpy/) and bismarck_engine(GD), which imports them
-- once per backend under the key BISMARCK_ENGINE. PL/Python cannot run SQL in a parallel worker,
-- so every function carries its own copy. Every PL/Python body is one call into the engine;
-- write each as "LANGUAGE plpython3u ... AS $$" and a newline (the build looks for that).
--
-- Sections: access role; registry tables; views; public functions; private functions;
-- aggregates; privileges.
--
-- Security: every function pins search_path to pg_catalog, pg_temp (so no object a user creates
-- can stand in for a built-in) and names the extension's own objects with their schema. User
-- relations arrive as regclass, resolved in the caller's context when the call is parsed. Nothing
-- runs as SECURITY DEFINER over a user-named table. Members of bismarck_user only read the
-- registry (filtering views, row-level security); it is written by a few SECURITY DEFINER
-- bookkeeping functions that check what the calling role may do (see README, "Sharing a
-- database").

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION bismarck CASCADE" to load this file. \quit

-- Built-ins only from pg_catalog while this script creates views and defaults (the extension's
-- schema may hold objects of users who once had CREATE there). LOCAL: the script's own setting
-- is restored when it ends (a plain SET would outlive it in the caller's session).
SET LOCAL search_path = pg_catalog, pg_temp;

------------------------------------------------------------------------------------------------
-- Access role (cluster-wide: created once, never dropped by the extension). Re-run by upgrades.
------------------------------------------------------------------------------------------------

DO $bismarck_role$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'bismarck_user') THEN
        CREATE ROLE bismarck_user NOLOGIN;
        COMMENT ON ROLE bismarck_user IS
            'Members may train, pack, predict and evaluate with bismarck on tables they can read.';
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created at the same moment by an installation in another database
END
$bismarck_role$;

------------------------------------------------------------------------------------------------
-- Registry tables (user data: kept across upgrades, dumped by pg_dump)
------------------------------------------------------------------------------------------------

-- Models of every kind (bismarckpy.kinds): kind names the engine module; stored (jsonb) and state
-- (bytea: large arrays) hold its stored form. GLMs also keep loss, coef and intercept as columns.
CREATE TABLE bismarck._models (
    model_name    text        NOT NULL,
    version       integer     NOT NULL,
    loss          text,
    source        text        NOT NULL,
    label         text        NOT NULL,
    features      text[]      NOT NULL,
    array_feature boolean     NOT NULL,
    coef          float8[],
    intercept     float8,
    classes       float8[],
    params        jsonb       NOT NULL,
    metrics       jsonb       NOT NULL,
    fitted        jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    owner         regrole     NOT NULL DEFAULT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER)),
    source_oid    oid,
    source_owner  regrole,
    kind          text        NOT NULL DEFAULT 'glm',
    stored        jsonb       NOT NULL,
    state         bytea,
    PRIMARY KEY (model_name, version),
    CONSTRAINT glm_columns CHECK (kind <> 'glm' OR (loss IS NOT NULL AND coef IS NOT NULL
                                                    AND intercept IS NOT NULL))
);
COMMENT ON TABLE bismarck._models IS
    'Private: trained models of every kind, one row per version (read them through '
    'bismarck.models).';
SELECT pg_catalog.pg_extension_config_dump('bismarck._models', '');

CREATE TABLE bismarck.model_names (
    model_name   text    PRIMARY KEY,
    owner        regrole NOT NULL DEFAULT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER)),
    last_version integer NOT NULL DEFAULT 0
);
COMMENT ON TABLE bismarck.model_names IS
    'Model names and their owners; last_version only grows, so version numbers are never reused.';
SELECT pg_catalog.pg_extension_config_dump('bismarck.model_names', '');

CREATE TABLE bismarck.model_grants (
    model_name text        NOT NULL,
    grantee    regrole     NOT NULL,
    owner      regrole     NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, grantee)
);
COMMENT ON TABLE bismarck.model_grants IS
    'Roles a model''s owner let see, predict with, evaluate and delete it '
    '(bismarck.grant_model, bismarck.revoke_model).';
SELECT pg_catalog.pg_extension_config_dump('bismarck.model_grants', '');

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
    finished_at timestamptz,
    owner       regrole     NOT NULL DEFAULT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER)),
    backend_start timestamptz,
    work_schema text
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
    detail          jsonb,
    PRIMARY KEY (run_id, epoch)
);
COMMENT ON TABLE bismarck._training_epoch IS
    'Private: per-epoch losses of each run (see bismarck.training_history).';
SELECT pg_catalog.pg_extension_config_dump('bismarck._training_epoch', '');

CREATE TABLE bismarck._packed_tables (
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
    created_at    timestamptz NOT NULL DEFAULT now(),
    owner         regrole     NOT NULL
);
COMMENT ON TABLE bismarck._packed_tables IS
    'Private: packed tables written by bismarck.pack (read them through bismarck.packed_tables).';
SELECT pg_catalog.pg_extension_config_dump('bismarck._packed_tables', '');

-- Installations of an earlier 0.2.0 development build lack _packed_tables.owner (re-run by
-- upgrades and code refreshes; a no-op once the column exists).
DO $bismarck_packed_owner$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = 'bismarck._packed_tables'::pg_catalog.regclass
                      AND a.attname = 'owner' AND NOT a.attisdropped) THEN
        DELETE FROM bismarck._packed_tables p
         WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = p.packed_table);
        ALTER TABLE bismarck._packed_tables ADD COLUMN owner regrole;
        UPDATE bismarck._packed_tables p SET owner = c.relowner::regrole
          FROM pg_catalog.pg_class c WHERE c.oid = p.packed_table;
        ALTER TABLE bismarck._packed_tables ALTER COLUMN owner SET NOT NULL;
    END IF;
END
$bismarck_packed_owner$;

-- Installations of an earlier 0.2.0 development build lack _models.source_oid and source_owner
-- (the source table's OID and owner when trained; NULL for older models).
DO $bismarck_source_oid$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid = 'bismarck._models'::pg_catalog.regclass
                      AND a.attname = 'source_oid' AND NOT a.attisdropped) THEN
        ALTER TABLE bismarck._models ADD COLUMN source_oid oid, ADD COLUMN source_owner regrole;
    END IF;
END
$bismarck_source_oid$;

------------------------------------------------------------------------------------------------
-- Row-level security: members of bismarck_user reach only rows of roles whose privileges they
-- have (pg_has_role ... 'USAGE'), and models whose owner granted them. Built-ins only, so that
-- upgrades can drop and re-create the extension's functions. (Migrations create these too.)
------------------------------------------------------------------------------------------------

ALTER TABLE bismarck._models ENABLE ROW LEVEL SECURITY;
CREATE POLICY use_model ON bismarck._models FOR SELECT
    USING (pg_has_role(owner, 'USAGE') OR EXISTS (
        SELECT 1 FROM bismarck.model_grants g
         WHERE g.model_name = _models.model_name AND g.owner = _models.owner
           AND pg_has_role(g.grantee, 'USAGE')));
CREATE POLICY delete_model ON bismarck._models FOR DELETE
    USING (pg_has_role(owner, 'USAGE') OR EXISTS (
        SELECT 1 FROM bismarck.model_grants g
         WHERE g.model_name = _models.model_name AND g.owner = _models.owner
           AND pg_has_role(g.grantee, 'USAGE')));
CREATE POLICY store_model ON bismarck._models FOR INSERT
    WITH CHECK (pg_has_role(owner, 'USAGE') AND EXISTS (
        SELECT 1 FROM bismarck.model_names n
         WHERE n.model_name = _models.model_name AND n.owner = _models.owner
           AND n.last_version = _models.version));

ALTER TABLE bismarck.model_names ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_name ON bismarck.model_names FOR ALL
    USING (pg_has_role(owner, 'USAGE')) WITH CHECK (pg_has_role(owner, 'USAGE'));

ALTER TABLE bismarck.model_grants ENABLE ROW LEVEL SECURITY;
CREATE POLICY see_grant ON bismarck.model_grants FOR SELECT
    USING (pg_has_role(grantee, 'USAGE') OR pg_has_role(owner, 'USAGE'));
CREATE POLICY give_grant ON bismarck.model_grants FOR INSERT
    WITH CHECK (pg_has_role(owner, 'USAGE') AND EXISTS (
        SELECT 1 FROM bismarck.model_names n
         WHERE n.model_name = model_grants.model_name AND n.owner = model_grants.owner));
CREATE POLICY take_grant ON bismarck.model_grants FOR DELETE
    USING (pg_has_role(owner, 'USAGE'));

ALTER TABLE bismarck._training_run ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_run ON bismarck._training_run FOR ALL
    USING (pg_has_role(owner, 'USAGE')) WITH CHECK (pg_has_role(owner, 'USAGE'));

ALTER TABLE bismarck._training_epoch ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_epoch ON bismarck._training_epoch FOR ALL
    USING (EXISTS (SELECT 1 FROM bismarck._training_run r WHERE r.run_id = _training_epoch.run_id))
    WITH CHECK (EXISTS (SELECT 1 FROM bismarck._training_run r
                         WHERE r.run_id = _training_epoch.run_id));

ALTER TABLE bismarck._packed_tables ENABLE ROW LEVEL SECURITY;
CREATE POLICY see_packed ON bismarck._packed_tables FOR SELECT
    USING (has_table_privilege(packed_table, 'SELECT'));
CREATE POLICY register_packed ON bismarck._packed_tables FOR INSERT
    WITH CHECK (EXISTS (SELECT 1 FROM pg_class c
                         WHERE c.oid = packed_table AND pg_has_role(c.relowner, 'USAGE')));

CREATE FUNCTION bismarck._columns_readable(source text, columns text[], source_oid oid,
                                            source_owner regrole) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel oid;
BEGIN
    -- The table the model was trained on, by OID, owner and schema-qualified name; models of
    -- before 0.2.0 (no OID) by name, but never through a temporary schema (the reader's own
    -- pg_temp could hold a look-alike).
    IF source_oid IS NOT NULL THEN
        SELECT c.oid INTO rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = source_oid AND c.relowner = source_owner
           AND format('%I.%I', n.nspname, c.relname) = source;
    ELSE
        SELECT c.oid INTO rel FROM pg_class c
         WHERE c.oid = to_regclass(source) AND c.relpersistence <> 't';
    END IF;
    IF rel IS NULL OR NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = rel
                                   AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity) THEN
        RETURN false;  -- gone, or a view or a table with row-level security (may hide rows)
    END IF;
    RETURN coalesce((SELECT bool_and(coalesce(has_column_privilege(a.attrelid, a.attnum,
                                                                   'SELECT'), false))
                            AND count(*) = cardinality(columns)
                       FROM pg_attribute a
                      WHERE a.attrelid = rel AND a.attnum > 0
                        AND NOT a.attisdropped AND a.attname = ANY (columns)), false);
EXCEPTION WHEN insufficient_privilege OR invalid_name OR syntax_error THEN
    RETURN false;  -- a schema the user may not use, or a name that no longer parses
END
$$;
COMMENT ON FUNCTION bismarck._columns_readable(text, text[], oid, regrole) IS
    'Private: whether the current user may SELECT all these columns of the table a model was '
    'trained on (same OID, owner and name), if it has no row-level security (false for views, '
    'tables with row-level security, and tables gone or replaced).';

------------------------------------------------------------------------------------------------
-- Views (filtering: each user sees the rows the policies above would show them)
------------------------------------------------------------------------------------------------

CREATE VIEW bismarck.models WITH (security_barrier) AS
SELECT m.model_name,
       m.version,
       m.owner,
       m.loss,
       m.source,
       m.label,
       m.features,
       m.array_feature,
       m.coef,
       m.intercept,
       m.classes,
       m.params,
       m.metrics,
       CASE WHEN pg_has_role(m.owner, 'USAGE')
                 OR bismarck._columns_readable(m.source, m.label || m.features,
                                               m.source_oid, m.source_owner)
            THEN m.fitted END AS fitted,
       m.created_at,
       m.kind,
       m.stored,
       m.state
FROM bismarck._models m
WHERE pg_has_role(m.owner, 'USAGE') OR EXISTS (
    SELECT 1 FROM bismarck.model_grants g
     WHERE g.model_name = m.model_name AND g.owner = m.owner
       AND pg_has_role(g.grantee, 'USAGE'));
COMMENT ON VIEW bismarck.models IS
    'Trained models you own or were granted, one row per version: the model kind (glm, ...) and '
    'its stored form (stored, state), for GLMs the loss and coefficients in the original '
    'feature units, hyper-parameters (params), training metrics and the standardisation used '
    '(fitted: NULL unless you own the model, or its source is a table without row-level '
    'security whose label and feature columns you may read); kind is glm or mf (a matrix '
    'factorisation: label is its value column, features its row and column id columns, '
    'intercept the global mean, state its ids, biases and factors as bytes). A classifier whose '
    'label is not a number (text, boolean, an enum...) has stored->''label_type'' and '
    'stored->''class_labels'' (the class values as text, in class order; classes then holds '
    'their indexes 0..K-1).';

-- The per-epoch detail column (averaging => 'partition') for installations from before it:
-- a DO block is re-run by every upgrade and re-install, so no migration script is needed.
DO $$
BEGIN
    ALTER TABLE bismarck._training_epoch ADD COLUMN IF NOT EXISTS detail jsonb;
END
$$;

CREATE VIEW bismarck.training_history WITH (security_barrier) AS
SELECT r.model_name,
       r.version,
       r.run_id,
       CASE WHEN r.status = 'running' AND NOT EXISTS (
                SELECT 1 FROM pg_stat_activity a
                 WHERE a.pid = r.backend_pid
                   AND (a.backend_start IS NULL OR r.backend_start IS NULL
                        OR a.backend_start = r.backend_start))
            THEN 'interrupted' ELSE r.status END AS status,
       e.epoch,
       e.train_loss,
       e.validation_loss,
       e.learning_rate,
       e.rows,
       e.seconds,
       e.workers,
       e.recorded_at,
       e.detail
FROM bismarck._training_run r
JOIN bismarck._training_epoch e USING (run_id)
WHERE pg_has_role(r.owner, 'USAGE') OR EXISTS (
    SELECT 1 FROM bismarck.model_grants g
     WHERE g.model_name = r.model_name AND g.owner = r.owner
       AND pg_has_role(g.grantee, 'USAGE'));
COMMENT ON VIEW bismarck.training_history IS
    'Per-epoch training and validation loss, learning rate, rows, seconds and parallel workers '
    'merged (0: a serial scan) of your runs and of models granted to you; version is set once '
    'the run has stored its model.';

CREATE VIEW bismarck.packed_tables WITH (security_barrier) AS
SELECT p.packed_table,
       p.source,
       p.label,
       p.features,
       p.array_feature,
       p.n_features,
       p.dtype,
       p.block_size,
       p.rows,
       p.skipped_rows,
       p.label_values,
       p.seed,
       p.created_at,
       (p.rows > 0 AND pg_relation_size(p.packed_table) = 0) AS emptied
FROM bismarck._packed_tables p
JOIN pg_class c ON c.oid = p.packed_table AND c.relowner = p.owner
WHERE has_table_privilege(p.packed_table, 'SELECT');
COMMENT ON VIEW bismarck.packed_tables IS
    'Packed tables written by bismarck.pack that exist and that you may read: their source, '
    'label, features and block layout; emptied is true when a crash emptied the unlogged table '
    '(pack it again). train_glm recognises them as sources and reuses their blocks.';

------------------------------------------------------------------------------------------------
-- Public functions
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck.train_glm(
    source              regclass,
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
    solver              text     DEFAULT NULL,
    class_weight        text     DEFAULT NULL,
    averaging           text     DEFAULT NULL,
    parallel_mode       text     DEFAULT NULL,
    average             boolean  DEFAULT NULL,
    OUT version         integer,
    OUT epochs          integer,
    OUT converged       boolean,
    OUT train_loss      float8,
    OUT validation_loss float8,
    OUT seconds         float8)
RETURNS record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
    r jsonb;
BEGIN
    result := bismarck._train('glm', jsonb_build_object(
        'source', source::text, 'label', label, 'features', features,
        'model_name', coalesce(model_name,
                               (SELECT c.relname::text FROM pg_class c WHERE c.oid = source)),
        'loss', loss, 'penalty', penalty, 'alpha', alpha, 'l1_ratio', l1_ratio,
        'fit_intercept', fit_intercept, 'standardize', standardize, 'max_epochs', max_epochs,
        'tol', tol, 'n_iter_no_change', n_iter_no_change, 'learning_rate', learning_rate,
        'eta0', eta0, 'power_t', power_t, 'batch_size', batch_size, 'shuffle', shuffle,
        'packed', packed, 'block_size', block_size, 'dtype', dtype, 'seed', seed, 'validation_fraction', validation_fraction, 'parallel', parallel,
        'solver', solver, 'class_weight', class_weight, 'averaging', averaging,
        'parallel_mode', parallel_mode, 'average', average));
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
COMMENT ON FUNCTION bismarck.train_glm(regclass, text, text[], text, text, text, float8, float8,
    boolean, boolean, integer, float8, integer, text, float8, float8, integer, text, boolean,
    integer, text, bigint, float8, integer, text, text, text, text, boolean) IS
    'Train a generalized linear model (loss logistic, squared or hinge) with SGD epochs run as '
    'an aggregate, or exactly (solver newton or lbfgs: one aggregate pass per iteration, with '
    'standard errors), and store it as the next version of model_name (default: the source table''s '
    'name). features is a list of numeric columns or one float8[] column. NULL options take '
    'defaults.';

CREATE FUNCTION bismarck.train_mlp(
    source              regclass,
    label               text,
    features            text[],
    INOUT model_name    text     DEFAULT NULL,
    hidden              integer[] DEFAULT NULL,
    activation          text     DEFAULT NULL,
    task                text     DEFAULT NULL,
    solver              text     DEFAULT NULL,
    alpha               float8   DEFAULT NULL,
    learning_rate_init  float8   DEFAULT NULL,
    learning_rate       text     DEFAULT NULL,
    momentum            float8   DEFAULT NULL,
    nesterovs_momentum  boolean  DEFAULT NULL,
    beta_1              float8   DEFAULT NULL,
    beta_2              float8   DEFAULT NULL,
    epsilon             float8   DEFAULT NULL,
    batch_size          integer  DEFAULT NULL,
    max_epochs          integer  DEFAULT NULL,
    tol                 float8   DEFAULT NULL,
    n_iter_no_change    integer  DEFAULT NULL,
    validation_fraction float8   DEFAULT NULL,
    standardize         boolean  DEFAULT NULL,
    shuffle             text     DEFAULT NULL,
    packed              boolean  DEFAULT NULL,
    block_size          integer  DEFAULT NULL,
    dtype               text     DEFAULT NULL,
    seed                bigint   DEFAULT NULL,
    parallel            integer  DEFAULT NULL,
    averaging           text     DEFAULT NULL,
    parallel_mode       text     DEFAULT NULL,
    OUT version         integer,
    OUT epochs          integer,
    OUT converged       boolean,
    OUT train_loss      float8,
    OUT validation_loss float8,
    OUT seconds         float8)
RETURNS record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
    r jsonb;
BEGIN
    result := bismarck._train('mlp', jsonb_build_object(
        'source', source::text, 'label', label, 'features', features,
        'model_name', coalesce(model_name,
                               (SELECT c.relname::text FROM pg_class c WHERE c.oid = source)),
        'hidden', hidden, 'activation', activation, 'task', task, 'solver', solver,
        'alpha', alpha, 'learning_rate_init', learning_rate_init,
        'learning_rate', learning_rate, 'momentum', momentum,
        'nesterovs_momentum', nesterovs_momentum, 'beta_1', beta_1, 'beta_2', beta_2,
        'epsilon', epsilon, 'batch_size', batch_size, 'max_epochs', max_epochs, 'tol', tol,
        'n_iter_no_change', n_iter_no_change, 'validation_fraction', validation_fraction,
        'standardize', standardize, 'shuffle', shuffle, 'packed', packed,
        'block_size', block_size, 'dtype', dtype, 'seed', seed, 'parallel', parallel,
        'averaging', averaging, 'parallel_mode', parallel_mode));
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
COMMENT ON FUNCTION bismarck.train_mlp(regclass, text, text[], text, integer[], text, text, text,
    float8, float8, text, float8, boolean, float8, float8, float8, integer, integer, float8,
    integer, float8, boolean, text, boolean, integer, text, bigint, integer, text, text) IS
    'Train a multi-layer perceptron (hidden layer sizes, activation relu, tanh or logistic; '
    'task classification: softmax over the label''s classes, or regression) by backpropagation '
    'on packed mini-batches with Adam or SGD with momentum, one aggregate per epoch, stopping '
    'early on the validation loss (the best epoch is stored), and store it as the next version '
    'of model_name (default: the source table''s name). NULL options take defaults.';

CREATE FUNCTION bismarck.train_mf(
    source              regclass,
    row_col             text,
    col_col             text,
    value_col           text,
    INOUT model_name    text     DEFAULT NULL,
    rank                integer  DEFAULT NULL,
    alpha               float8   DEFAULT NULL,
    alpha_bias          float8   DEFAULT NULL,
    learning_rate       text     DEFAULT NULL,
    eta0                float8   DEFAULT NULL,
    power_t             float8   DEFAULT NULL,
    max_epochs          integer  DEFAULT NULL,
    tol                 float8   DEFAULT NULL,
    n_iter_no_change    integer  DEFAULT NULL,
    batch_size          integer  DEFAULT NULL,
    block_size          integer  DEFAULT NULL,
    init_std            float8   DEFAULT NULL,
    seed                bigint   DEFAULT NULL,
    validation_fraction float8   DEFAULT NULL,
    averaging           text     DEFAULT NULL,
    OUT version         integer,
    OUT epochs          integer,
    OUT converged       boolean,
    OUT train_loss      float8,
    OUT validation_loss float8,
    OUT seconds         float8)
RETURNS record
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
    r jsonb;
BEGIN
    result := bismarck._train_mf(jsonb_build_object(
        'source', source::text, 'row_col', row_col, 'col_col', col_col,
        'value_col', value_col,
        'model_name', coalesce(model_name,
                               (SELECT c.relname::text FROM pg_class c WHERE c.oid = source)),
        'rank', rank, 'alpha', alpha, 'alpha_bias', alpha_bias,
        'learning_rate', learning_rate, 'eta0', eta0, 'power_t', power_t,
        'max_epochs', max_epochs, 'tol', tol, 'n_iter_no_change', n_iter_no_change,
        'batch_size', batch_size, 'block_size', block_size, 'init_std', init_std, 'seed', seed,
        'validation_fraction', validation_fraction, 'averaging', averaging));
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
COMMENT ON FUNCTION bismarck.train_mf(regclass, text, text, text, text, integer, float8, float8,
    text, float8, float8, integer, float8, integer, integer, integer, float8, bigint, float8,
    text) IS
    'Train a low-rank matrix factorisation (global mean, row and column biases, rank factors '
    'per row and column; SGD with L2 penalties alpha and alpha_bias) on (row id, column id, '
    'value) triples with integer ids, and store it as the next version of model_name (default: '
    'the source table''s name). train_loss and validation_loss are mean squared errors. NULL '
    'options take defaults. averaging takes only ''global'': a factorisation is not averaged '
    'over partitions.';

CREATE FUNCTION bismarck.predict_mf(model text, row_id bigint, col_id bigint,
                                    unknown text DEFAULT 'error', version integer DEFAULT NULL)
RETURNS float8
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
BEGIN
    result := bismarck._predict_mf(model, row_id, col_id, unknown, version);
    PERFORM bismarck._raise_if_error(result);
    RETURN (result ->> 'ok')::float8;
END
$$;
COMMENT ON FUNCTION bismarck.predict_mf(text, bigint, bigint, text, integer) IS
    'The value a stored matrix factorisation predicts for (row_id, col_id): mean + row bias + '
    'column bias + the factors'' dot product. NULL when an id is NULL. An id not seen in '
    'training raises an error (unknown => ''error'', the default), gives mean + the known '
    'biases (unknown => ''baseline'') or NULL (unknown => ''null'').';

CREATE FUNCTION bismarck.predict_mf(model text, row_ids bigint[], col_ids bigint[],
                                    unknown text DEFAULT 'error', version integer DEFAULT NULL)
RETURNS float8[]
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
BEGIN
    result := bismarck._predict_mf_many(model, row_ids, col_ids, unknown, version);
    PERFORM bismarck._raise_if_error(result);
    IF jsonb_typeof(result -> 'ok') <> 'array' THEN
        RETURN NULL;
    END IF;
    RETURN ARRAY(SELECT (e.v #>> '{}')::float8
                   FROM jsonb_array_elements(result -> 'ok') WITH ORDINALITY AS e(v, n)
                  ORDER BY e.n);
END
$$;
COMMENT ON FUNCTION bismarck.predict_mf(text, bigint[], bigint[], text, integer) IS
    'predict_mf for many (row id, column id) pairs in one call (the arrays must have the same '
    'length): one value per pair, NULL where an id is NULL (or unknown with unknown => ''null'').';

CREATE FUNCTION bismarck.recommend_mf(model text, row_id bigint, k integer DEFAULT 10,
                                      exclude_rated boolean DEFAULT true,
                                      version integer DEFAULT NULL)
RETURNS TABLE (col_id bigint, score float8)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
BEGIN
    result := bismarck._recommend_mf(model, row_id, k, exclude_rated, version);
    PERFORM bismarck._raise_if_error(result);
    RETURN QUERY SELECT (e.v ->> 'col_id')::bigint, (e.v ->> 'score')::float8
                   FROM jsonb_array_elements(result -> 'ok') WITH ORDINALITY AS e(v, n)
                  ORDER BY e.n;
END
$$;
COMMENT ON FUNCTION bismarck.recommend_mf(text, bigint, integer, boolean, integer) IS
    'The k column ids with the highest predicted value for row_id, best first (ties by '
    'ascending id), leaving out the columns the model''s training source holds for that row '
    'unless exclude_rated is false. An unknown row_id is an error.';

CREATE FUNCTION bismarck.pack(
    source           regclass,
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
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
    r jsonb;
BEGIN
    result := bismarck._pack(jsonb_build_object(
        'source', source::text, 'label', label, 'features', features,
        'packed_table', packed_table, 'block_size', block_size, 'dtype', dtype, 'seed', seed));
    PERFORM bismarck._raise_if_error(result);
    r := result -> 'ok';
    packed_table := r ->> 'packed_table';
    blocks := (r ->> 'blocks')::bigint;
    rows := (r ->> 'rows')::bigint;
    skipped_rows := (r ->> 'skipped_rows')::bigint;
    seconds := (r ->> 'seconds')::float8;
END
$$;
COMMENT ON FUNCTION bismarck.pack(regclass, text, text[], text, integer, text, bigint) IS
    'Write a shuffled, packed copy of a table (blocks of block_size rows as float32 or float64 '
    'numpy buffers) that train_glm can use as its source, again and again, for any loss. A '
    'packed_table without a schema is created in the source''s schema.';

CREATE FUNCTION bismarck.predict(model text, x float8[], version integer DEFAULT NULL)
RETURNS float8
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m bismarck.models;
BEGIN
    m := bismarck._model(model, version);
    PERFORM bismarck._require_glm(m.model_name, m.kind, true);
    IF m.kind <> 'glm' AND m.classes IS NOT NULL AND m.stored ? 'class_labels' THEN
        -- A softmax or MLP classifier answers a class: for a label that is not a number its
        -- models.classes are indexes 0..K-1, never to be returned in place of the class.
        RAISE EXCEPTION 'model "%" predicts classes of type %, not numbers', m.model_name,
            m.stored ->> 'label_type'
            USING ERRCODE = '42804',
                  DETAIL = 'predict(model, x) returns float8: a classifier''s class as a '
                           'number serves numeric labels only.',
                  HINT = format('Ask for the label''s type: bismarck.predict_class(%L, x, '
                                'NULL::%s), or for text: bismarck.predict_label(%L, x); '
                                'bismarck.predict_proba(%L, x) gives the probabilities.',
                                model, m.stored ->> 'label_type', model, model);
    END IF;
    IF x IS NULL THEN
        RETURN NULL;
    END IF;
    IF m.kind <> 'glm' THEN
        PERFORM bismarck._check_vector(m, x);
        RETURN bismarck._predict_kind(m.kind, m.stored, m.state, x);
    END IF;
    RETURN bismarck._link(m.loss, bismarck._margin(m, x));
END
$$;
COMMENT ON FUNCTION bismarck.predict(text, float8[], integer) IS
    'Score one feature vector with a stored model of any kind (latest version unless given): '
    'for GLMs the probability of the second class for logistic (whatever the label''s type), '
    'the value for squared, the signed margin for hinge; for softmax and MLP classifiers the '
    'predicted class of a numeric label (an error naming predict_class(model, x, NULL::type) '
    'for a label of another type: text, boolean, an enum...); for MLP regression the value. '
    'NULL when x is NULL or has a NULL, NaN or infinite element.';

CREATE FUNCTION bismarck._require_classifier(m bismarck.models) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF m.classes IS NULL THEN
        RAISE EXCEPTION 'model "%" is a regression model', m.model_name
            USING ERRCODE = '22023',
                  HINT = 'predict_class needs a classifier (loss logistic, hinge or softmax, an '
                         'MLP with task classification); use predict.';
    END IF;
END
$$;
COMMENT ON FUNCTION bismarck._require_classifier(bismarck.models) IS
    'Private: an error naming predict for a model without classes (a regression model).';

CREATE FUNCTION bismarck._class_code(m bismarck.models, x float8[]) RETURNS float8
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    z float8;
BEGIN
    IF x IS NULL THEN
        RETURN NULL;
    END IF;
    IF m.kind <> 'glm' THEN
        PERFORM bismarck._check_vector(m, x);
        RETURN bismarck._predict_kind(m.kind, m.stored, m.state, x);
    END IF;
    z := bismarck._margin(m, x);
    RETURN CASE WHEN z >= 0 THEN m.classes[2] WHEN z < 0 THEN m.classes[1] END;  -- NULL: NULL
END
$$;
COMMENT ON FUNCTION bismarck._class_code(bismarck.models, float8[]) IS
    'Private: the predicted class of a classifier as its models.classes value (for a label of '
    'class values that are not numbers, the class index 0..K-1 into stored->''class_labels''); '
    'NULL when x is NULL or has a NULL, NaN or infinite element.';

CREATE FUNCTION bismarck._class_label(m bismarck.models, code float8) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN code IS NULL THEN NULL
                WHEN m.stored ? 'class_labels' THEN m.stored -> 'class_labels' ->> code::integer
                -- an integral class without exponent (2e+15 is 2000000000000000), so that it
                -- casts to bigint and numeric as written
                WHEN code = trunc(code) AND abs(code) < 9.2e18 THEN code::bigint::text
                ELSE code::text END
$$;
COMMENT ON FUNCTION bismarck._class_label(bismarck.models, float8) IS
    'Private: the text of a class from _class_code: its value in stored->''class_labels'', or '
    'the number (an integral one in digits, without exponent).';

CREATE FUNCTION bismarck.predict_class(model text, x float8[], version integer DEFAULT NULL)
RETURNS float8
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m bismarck.models;
BEGIN
    m := bismarck._model(model, version);
    PERFORM bismarck._require_glm(m.model_name, m.kind, true);
    PERFORM bismarck._require_classifier(m);
    IF m.stored ? 'class_labels' THEN
        RAISE EXCEPTION 'model "%" predicts classes of type %, not numbers', m.model_name,
            m.stored ->> 'label_type'
            USING ERRCODE = '42804',
                  DETAIL = 'predict_class(model, x) returns float8: it serves numeric labels.',
                  HINT = format('Ask for the label''s type: bismarck.predict_class(%L, x, '
                                'NULL::%s), or for text: bismarck.predict_label(%L, x).',
                                model, m.stored ->> 'label_type', model);
    END IF;
    RETURN bismarck._class_code(m, x);
END
$$;
COMMENT ON FUNCTION bismarck.predict_class(text, float8[], integer) IS
    'The predicted class of a classifier (binary or softmax) with a numeric label, as that '
    'number (0/1, -1/+1 or the label''s values); an error naming predict_class(model, x, '
    'NULL::type) for a label of another type (text, boolean, an enum...); NULL when x is NULL '
    'or has a NULL, NaN or infinite element.';

CREATE FUNCTION bismarck._predict_class_typed(model text, x float8[], label_type anyelement,
                                              version integer)
RETURNS anyelement
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m bismarck.models;
    want text := format_type(pg_typeof(label_type), NULL);
    have text;
    code float8;
    bound float8;
BEGIN
    m := bismarck._model(model, version);
    PERFORM bismarck._require_glm(m.model_name, m.kind, true);
    PERFORM bismarck._require_classifier(m);
    have := m.stored ->> 'label_type';
    IF NOT (want IN ('text', 'character varying') OR want = have
            OR (have IS NULL AND want IN ('smallint', 'integer', 'bigint', 'real',
                                          'double precision', 'numeric'))) THEN
        RAISE EXCEPTION 'model "%" predicts classes of type %, not %', m.model_name,
            coalesce(have, 'a number'), want
            USING ERRCODE = '42804',
                  HINT = CASE WHEN have IS NULL
                              THEN format('Use bismarck.predict_class(%L, x) (float8) or a '
                                          'numeric type, e.g. NULL::bigint.', model)
                              ELSE format('Use bismarck.predict_class(%L, x, NULL::%s), or '
                                          'NULL::text for any label.', model, have) END;
    END IF;
    code := bismarck._class_code(m, x);
    bound := CASE want WHEN 'smallint' THEN 32767 WHEN 'integer' THEN 2147483647
                       WHEN 'bigint' THEN 9.2e18 END;
    IF have IS NULL AND bound IS NOT NULL AND code IS NOT NULL
       AND (code <> trunc(code) OR abs(code) > bound) THEN
        RAISE EXCEPTION 'class % of model "%" is not a value of type %',
            bismarck._class_label(m, code), m.model_name, want
            USING ERRCODE = '22003',
                  DETAIL = format('Its classes are %s.', array_to_string(
                      ARRAY(SELECT bismarck._class_label(m, c) FROM unnest(m.classes) AS c),
                      ', ')),
                  HINT = format('Ask for a type that holds them: bismarck.predict_class(%L, x, '
                                'NULL::numeric) or NULL::double precision.', model);
    END IF;
    -- PL/pgSQL converts the class's text to the result type by its input function.
    RETURN bismarck._class_label(m, code);
END
$$;
COMMENT ON FUNCTION bismarck._predict_class_typed(text, float8[], anyelement, integer) IS
    'Private: predict_class in the type of label_type (its checks and its answer).';

CREATE FUNCTION bismarck.predict_class(model text, x float8[], label_type anyelement,
                                       version integer DEFAULT NULL)
RETURNS anyelement
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT bismarck._predict_class_typed(model, x, label_type, version)
$$;
COMMENT ON FUNCTION bismarck.predict_class(text, float8[], anyelement, integer) IS
    'The predicted class of a classifier in the label''s own type, named by a NULL of that type: '
    'predict_class(model, x, NULL::text) for a text label, NULL::boolean, NULL::my_enum, '
    'NULL::bigint, NULL::numeric ...; any label as NULL::text. An error for a class the type '
    'cannot hold (2.5 as bigint). NULL when x is NULL or has a NULL, NaN or infinite element.';

CREATE FUNCTION bismarck.predict_class(model text, x float8[], label_type smallint,
                                       version integer DEFAULT NULL)
RETURNS smallint
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT bismarck._predict_class_typed(model, x, label_type, version)
$$;
COMMENT ON FUNCTION bismarck.predict_class(text, float8[], smallint, integer) IS
    'predict_class(model, x, NULL::smallint): the class as smallint (this overload makes the '
    'call unambiguous beside predict_class(model, x, version integer)).';

CREATE FUNCTION bismarck.predict_label(model text, x float8[], version integer DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m bismarck.models;
BEGIN
    m := bismarck._model(model, version);
    PERFORM bismarck._require_glm(m.model_name, m.kind, true);
    PERFORM bismarck._require_classifier(m);
    RETURN bismarck._class_label(m, bismarck._class_code(m, x));
END
$$;
COMMENT ON FUNCTION bismarck.predict_label(text, float8[], integer) IS
    'The predicted class of any classifier as text (the label''s value as text: ''setosa'', '
    '''true'', ''3''); NULL when x is NULL or has a NULL, NaN or infinite element.';

CREATE FUNCTION bismarck.classes(model text, version integer DEFAULT NULL)
RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m bismarck.models;
BEGIN
    m := bismarck._model(model, version);
    IF m.stored ? 'class_labels' THEN
        RETURN ARRAY(SELECT jsonb_array_elements_text(m.stored -> 'class_labels'));
    END IF;
    IF m.classes IS NULL THEN
        RETURN NULL;
    END IF;
    -- numbers as predict_label writes them: an integral class in digits (not 1e+15)
    RETURN ARRAY(SELECT bismarck._class_label(m, u.c)
                   FROM unnest(m.classes) WITH ORDINALITY AS u(c, i) ORDER BY u.i);
END
$$;
COMMENT ON FUNCTION bismarck.classes(text, integer) IS
    'The classes of a classifier as text, in the order of predict_proba''s probabilities (for '
    'a label that is not a number, models.classes holds their indexes 0..K-1; a number as '
    'predict_label writes it, an integral one in digits); NULL for a regression model.';

CREATE FUNCTION bismarck.predict_proba(model text, x float8[], version integer DEFAULT NULL)
RETURNS float8[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m bismarck.models;
    p float8;
BEGIN
    m := bismarck._model(model, version);
    PERFORM bismarck._require_glm(m.model_name, m.kind, true);
    IF m.kind = 'glm' AND m.loss IS DISTINCT FROM 'logistic' THEN
        RAISE EXCEPTION 'model "%" does not give probabilities', m.model_name
            USING ERRCODE = '22023',
                  DETAIL = format('Its loss is %s.', m.loss),
                  HINT = 'predict_proba needs loss logistic or softmax; use predict.';
    END IF;
    IF m.kind = 'mlp' AND m.stored ->> 'task' = 'regression' THEN
        RAISE EXCEPTION 'model "%" does not give probabilities', m.model_name
            USING ERRCODE = '22023',
                  DETAIL = 'It is a regression MLP (task => ''regression'').',
                  HINT = 'Use bismarck.predict for its predictions.';
    END IF;
    IF x IS NULL THEN
        RETURN NULL;
    END IF;
    IF m.kind <> 'glm' THEN
        PERFORM bismarck._check_vector(m, x);
        RETURN bismarck._predict_proba_kind(m.kind, m.stored, m.state, x);
    END IF;
    p := bismarck._link(m.loss, bismarck._margin(m, x));
    RETURN CASE WHEN p IS NULL THEN NULL ELSE ARRAY[1 - p, p] END;
END
$$;
COMMENT ON FUNCTION bismarck.predict_proba(text, float8[], integer) IS
    'The class probabilities of a probabilistic classifier for one feature vector, in the order '
    'of bismarck.models.classes (binary logistic: {P(first class), P(second class)}; softmax: '
    'K probabilities); NULL when x is NULL or has a NULL, NaN or infinite element.';

CREATE FUNCTION bismarck.evaluate(model text, source regclass, version integer DEFAULT NULL)
RETURNS TABLE (metric text, value float8)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
BEGIN
    result := bismarck._evaluate(model, source::text, version);
    PERFORM bismarck._raise_if_error(result);
    RETURN QUERY SELECT r.metric, r.value
                   FROM jsonb_to_recordset(result -> 'ok') AS r(metric text, value float8);
END
$$;
COMMENT ON FUNCTION bismarck.evaluate(text, regclass, integer) IS
    'Metrics of a stored model on a table or view holding its label and feature columns: '
    'accuracy, precision, recall, f1, roc_auc, log_loss (classifiers); rmse, mae, r2 (squared); '
    'accuracy, f1_macro, log_loss (softmax, MLP classification). A label of class values (text, '
    'an enum...) is coded with the model''s classes; a value that is none of them is an error.';

CREATE FUNCTION bismarck._require_glm(model text, kind text, vectors boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A matrix factorisation scores (row id, column id) pairs of bigint ids, not float8
    -- feature vectors (which would round ids above 2**53): its own functions score it.
    IF vectors AND kind = 'mf' THEN
        RAISE EXCEPTION 'model "%" is a matrix factorisation', model
            USING ERRCODE = '22023',
                  HINT = 'Use bismarck.predict_mf(model, row_id, col_id) or '
                         'bismarck.recommend_mf(model, row_id, k).';
    END IF;
    IF NOT vectors AND kind IS DISTINCT FROM 'glm' THEN
        RAISE EXCEPTION 'model "%" is of kind %, which has no coefficient table', model, kind
            USING ERRCODE = '0A000',
                  HINT = CASE WHEN kind = 'mf'
                              THEN 'Its biases and factors are in bismarck.models.state; '
                                   'score it with bismarck.predict_mf.'
                              ELSE 'Its weights are in bismarck.models.stored.' END;
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION bismarck._require_glm(text, text, boolean) IS
    'Private: true for a GLM (or, with vectors, for any kind that scores feature vectors: not '
    'mf), else a clear error naming the functions to use.';

CREATE FUNCTION bismarck.coefficients(model text, version integer DEFAULT NULL)
RETURNS TABLE (feature text, coef float8, std_err float8, statistic float8, p_value float8)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.feature, t.coef,
           (m.fitted -> 'std_err' ->> t.i)::float8,
           (m.fitted -> 'statistic' ->> t.i)::float8,
           (m.fitted -> 'p_value' ->> t.i)::float8
      FROM bismarck._model($1, $2) AS m,
           LATERAL (SELECT 0 AS i, '(intercept)'::text AS feature, m.intercept AS coef
                     WHERE coalesce((m.params ->> 'fit_intercept')::boolean, true)
                    UNION ALL
                    SELECT k, CASE WHEN m.array_feature
                                   THEN format('%s[%s]', m.features[1], k)
                                   ELSE m.features[k] END, m.coef[k]
                      FROM generate_subscripts(m.coef, 1) AS k) AS t
     WHERE bismarck._require_glm(m.model_name, m.kind)
     ORDER BY t.i
$$;
COMMENT ON FUNCTION bismarck.coefficients(text, integer) IS
    'The coefficients of a stored model (latest version unless given), intercept first, with '
    'standard errors, z (logistic) or t (squared) statistics and two-sided p-values for '
    'unpenalised fits by solver newton or lbfgs (NULL otherwise).';

CREATE FUNCTION bismarck.delete_model(model text, version integer DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM bismarck._model(model, version);
    RETURN bismarck._delete_versions(bismarck._ticket(), model, version);
END
$$;
COMMENT ON FUNCTION bismarck.delete_model(text, integer) IS
    'Delete one version of a model, or all its versions when version is NULL; returns how many. '
    'Version numbers are never given again.';

CREATE FUNCTION bismarck.grant_model(model text, role regrole) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF model IS NULL THEN
        RAISE EXCEPTION 'model must not be NULL' USING ERRCODE = '22004',
              HINT = 'Pass the name of a model you own: SELECT model_name FROM bismarck.models.';
    END IF;
    PERFORM bismarck._set_grant(bismarck._ticket(), model, role, true);
END
$$;
COMMENT ON FUNCTION bismarck.grant_model(text, regrole) IS
    'Let a role (and its members) see, predict with, evaluate and delete every version of a '
    'model you own.';

CREATE FUNCTION bismarck.revoke_model(model text, role regrole) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF model IS NULL THEN
        RAISE EXCEPTION 'model must not be NULL' USING ERRCODE = '22004',
              HINT = 'Pass the name of a model you own: SELECT model_name FROM bismarck.models.';
    END IF;
    RETURN bismarck._set_grant(bismarck._ticket(), model, role, false);
END
$$;
COMMENT ON FUNCTION bismarck.revoke_model(text, regrole) IS
    'Take back what grant_model gave a role; true when there was such a grant.';

------------------------------------------------------------------------------------------------
-- Private functions
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck._raise_if_error(result jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
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

CREATE FUNCTION bismarck._train(kind text, options jsonb) RETURNS jsonb
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
import json
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.train(plpy, kind, json.loads(options))
$$;
COMMENT ON FUNCTION bismarck._train(text, jsonb) IS
    'Private: runs the training loop for a model of the given kind (bismarckpy.kinds) inside '
    'this backend; returns a JSON result or error. The bismarck.train_<kind> functions call it.';

CREATE FUNCTION bismarck._train_mf(options jsonb) RETURNS jsonb
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
import json
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.mf.train_mf(plpy, json.loads(options))
$$;
COMMENT ON FUNCTION bismarck._train_mf(jsonb) IS
    'Private: runs the matrix factorisation training loop inside this backend; returns a JSON '
    'result or error.';

CREATE FUNCTION bismarck._predict_mf(model text, row_id bigint, col_id bigint, unknown text,
                                     version integer) RETURNS jsonb
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.mf.predict(plpy, model, row_id, col_id, unknown, version)
$$;
COMMENT ON FUNCTION bismarck._predict_mf(text, bigint, bigint, text, integer) IS
    'Private: predict_mf''s work (the decoded model cached in this backend); a JSON result or '
    'error.';

CREATE FUNCTION bismarck._predict_mf_many(model text, row_ids bigint[], col_ids bigint[],
                                          unknown text, version integer) RETURNS jsonb
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.mf.predict_many(plpy, model, row_ids, col_ids, unknown, version)
$$;
COMMENT ON FUNCTION bismarck._predict_mf_many(text, bigint[], bigint[], text, integer) IS
    'Private: predict_mf''s work over arrays; a JSON result or error.';

CREATE FUNCTION bismarck._recommend_mf(model text, row_id bigint, k integer,
                                       exclude_rated boolean, version integer) RETURNS jsonb
LANGUAGE plpython3u STABLE PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.mf.recommend(plpy, model, row_id, k, exclude_rated, version)
$$;
COMMENT ON FUNCTION bismarck._recommend_mf(text, bigint, integer, boolean, integer) IS
    'Private: recommend_mf''s work; a JSON result (col_id, score pairs, best first) or error.';

CREATE FUNCTION bismarck._pack(options jsonb) RETURNS jsonb
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
import json
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.pack_table(plpy, json.loads(options))
$$;
COMMENT ON FUNCTION bismarck._pack(jsonb) IS
    'Private: writes and registers a packed table; returns a JSON result or error.';

CREATE FUNCTION bismarck._evaluate(model text, source text, version integer) RETURNS jsonb
LANGUAGE plpython3u SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.evaluate(plpy, model, source, version)
$$;
COMMENT ON FUNCTION bismarck._evaluate(text, text, integer) IS
    'Private: computes evaluation metrics in SQL; returns a JSON result or error.';

CREATE FUNCTION bismarck._model(model text, version integer DEFAULT NULL)
RETURNS bismarck.models
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m bismarck.models;
BEGIN
    IF model IS NULL THEN
        RAISE EXCEPTION 'model must not be NULL' USING ERRCODE = '22004',
              HINT = 'Pass the name of a model: SELECT model_name FROM bismarck.models.';
    END IF;
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
                  HINT = 'List the models you may use with: SELECT model_name, version FROM '
                         'bismarck.models.';
    END IF;
    RETURN m;
END
$$;
COMMENT ON FUNCTION bismarck._model(text, integer) IS
    'Private: the registry row of a model (latest version unless given), or a clear error.';

CREATE FUNCTION bismarck._predict_kind(kind text, stored jsonb, state bytea, x float8[])
RETURNS float8
LANGUAGE plpython3u IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.predict_kind(plpy, kind, stored, state, x)
$$;
COMMENT ON FUNCTION bismarck._predict_kind(text, jsonb, bytea, float8[]) IS
    'Private: the prediction of a model of any kind for one feature vector, by the kind''s '
    'predict on its stored form (bismarckpy.kinds).';

CREATE FUNCTION bismarck._predict_proba_kind(kind text, stored jsonb, state bytea,
                                             x float8[])
RETURNS float8[]
LANGUAGE plpython3u IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.predict_proba_kind(plpy, kind, stored, state, x)
$$;
COMMENT ON FUNCTION bismarck._predict_proba_kind(text, jsonb, bytea, float8[]) IS
    'Private: the class probabilities of a model of any probabilistic kind for one feature '
    'vector, by the kind''s predict_proba on its stored form.';

CREATE FUNCTION bismarck._check_vector(m bismarck.models, x float8[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    d integer := (m.metrics ->> 'n_features')::integer;
BEGIN
    IF array_ndims(x) > 1 THEN
        RAISE EXCEPTION 'feature vector is a %-dimensional array', array_ndims(x)
            USING ERRCODE = '22000',
                  DETAIL = format('Model "%s" scores one 1-D array of features per call; got '
                                  'an array of dimensions %s.', m.model_name, array_dims(x)),
                  HINT = 'Pass one row''s features as a 1-D array, e.g. ARRAY[x1, x2]; keep '
                         'each row of a matrix in its own table row.';
    END IF;
    IF d IS NOT NULL AND cardinality(x) <> d THEN
        RAISE EXCEPTION 'feature vector has % elements but model "%" has % features',
            cardinality(x), m.model_name, d
            USING ERRCODE = '22000',
                  HINT = 'Pass the features in the order of bismarck.models.features.';
    END IF;
END
$$;
COMMENT ON FUNCTION bismarck._check_vector(bismarck.models, float8[]) IS
    'Private: an error for a feature vector that is not 1-D or not as long as the model''s '
    'features (metrics n_features), for models of kinds other than the GLM.';

CREATE FUNCTION bismarck._margin(m bismarck.models, x float8[]) RETURNS float8
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF array_ndims(x) > 1 THEN
        RAISE EXCEPTION 'feature vector is a %-dimensional array', array_ndims(x)
            USING ERRCODE = '22000',
                  DETAIL = format('Model "%s" scores one 1-D array of %s features per call; '
                                  'got an array of dimensions %s.', m.model_name,
                                  cardinality(m.coef), array_dims(x)),
                  HINT = 'Pass one row''s features as a 1-D array, e.g. ARRAY[x1, x2]; keep '
                         'each row of a matrix in its own table row.';
    END IF;
    IF cardinality(x) <> cardinality(m.coef) THEN
        RAISE EXCEPTION 'feature vector has % elements but model "%" has % features',
            cardinality(x), m.model_name, cardinality(m.coef)
            USING ERRCODE = '22000',
                  HINT = 'Pass the features in the order of bismarck.models.features.';
    END IF;
    IF array_position(x, NULL) IS NOT NULL
       OR x && '{NaN,Infinity,-Infinity}'::float8[] THEN
        RETURN NULL;  -- a missing value: no score (evaluate skips such rows, training too)
    END IF;
    RETURN bismarck._linear(m.coef, m.intercept, x);
END
$$;
COMMENT ON FUNCTION bismarck._margin(bismarck.models, float8[]) IS
    'Private: the linear score x·coef + intercept in original feature units; NULL when x has a '
    'NULL, NaN or infinite element; an error for a 2-D array or a wrong length.';

CREATE FUNCTION bismarck._linear(coef float8[], intercept float8, x float8[])
RETURNS float8
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    z float8;
    safe boolean;
BEGIN
    -- Fast path in float8 when no product can overflow or underflow (|c|, |v| in [1e-150,
    -- 1e150] or 0 gives |c*v| <= 1e300; an array has < 1.4e8 elements, so the sum and the
    -- intercept stay below 1.5e308). Otherwise the exact sum in numeric, which never raises.
    SELECT sum(CASE WHEN ok THEN c * v END), bool_and(ok) INTO z, safe
      FROM (SELECT c, v, (c = 0 OR abs(c) BETWEEN 1e-150::float8 AND 1e150::float8)
                         AND (v = 0 OR abs(v) BETWEEN 1e-150::float8 AND 1e150::float8) AS ok
              FROM unnest(coef, x) AS t(c, v)) AS p;
    IF safe AND abs(intercept) <= 1e300::float8 THEN
        RETURN intercept + z;
    END IF;
    RETURN bismarck._float8_saturated(intercept::text::numeric + (
        SELECT sum(c::text::numeric * v::text::numeric) FROM unnest(coef, x) AS t(c, v)));
END
$$;
COMMENT ON FUNCTION bismarck._linear(float8[], float8, float8[]) IS
    'Private: x·coef + intercept for finite x, never an overflow error: in float8 while no '
    'product can overflow or underflow, else exactly in numeric, mapped by _float8_saturated.';

CREATE FUNCTION bismarck._float8_saturated(v numeric) RETURNS float8
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN v > 1.7976931348623157e308 THEN 'Infinity'::float8
                WHEN v < -1.7976931348623157e308 THEN '-Infinity'::float8
                WHEN v = 0 THEN 0::float8
                -- Below the smallest subnormal the cast would fail: keep the sign.
                WHEN abs(v) < 4.9406564584124654e-324
                THEN sign(v)::float8 * '4.9406564584124654e-324'::float8
                ELSE v::float8 END
$$;
COMMENT ON FUNCTION bismarck._float8_saturated(numeric) IS
    'Private: a numeric as float8 without range errors: beyond float8 it is +-Infinity, and a '
    'non-zero value below the smallest subnormal (4.9e-324) is +-4.9e-324 (keeps its sign).';

CREATE FUNCTION bismarck._link(loss text, z float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN z IS NULL THEN NULL  -- least/greatest would skip a NULL: no score
                WHEN loss = 'logistic'
                THEN 1.0 / (1.0 + exp(-greatest(least(z, 700), -700)))
                ELSE z END
$$;
COMMENT ON FUNCTION bismarck._link(text, float8) IS
    'Private: maps a linear score to the prediction (sigmoid for logistic, identity otherwise).';

------------------------------------------------------------------------------------------------
-- Bookkeeping: the only writers of the registry. Members of bismarck_user may only SELECT the
-- registry tables (so they can neither forge rows that other users' code acts on nor take locks
-- that stall others); these SECURITY DEFINER functions write them for the calling role, each
-- checking what that role may do. None takes or touches a user-named table; every one pins
-- search_path. A SECURITY DEFINER function cannot see its invoker's CURRENT_USER, and a role
-- argument could be forged by lower-privileged code running in a higher session (an index
-- expression run by ANALYZE, a SECURITY DEFINER function called by a superuser). So each takes a
-- ticket: bismarck._ticket() (SECURITY INVOKER) inserts a row whose role is forced to
-- CURRENT_USER and whose pid is this backend (a CHECK constraint, which holds even for roles
-- that bypass row-level security), and returns its random id; the bookkeeping function deletes
-- that row of this backend and acts for its role. Members may only INSERT tickets (no SELECT, so
-- no one reads another's), and callers pass bismarck._ticket() in the same call, so no other code
-- runs between issuing and redeeming.
------------------------------------------------------------------------------------------------

CREATE TABLE bismarck._tickets (
    id        uuid        PRIMARY KEY,
    role      regrole     NOT NULL DEFAULT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER)),
    pid       integer     NOT NULL DEFAULT pg_catalog.pg_backend_pid(),
    issued_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    CONSTRAINT tickets_for_current_user CHECK (
        role OPERATOR(pg_catalog.=) pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
        AND pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid())
);
COMMENT ON TABLE bismarck._tickets IS
    'Private: one-use proofs of the role that called a bookkeeping function (bismarck._ticket).';

-- Row-level security as a second fence (re-run by upgrades: ALTER TABLE and CREATE POLICY are
-- not re-created by them).
DO $bismarck_tickets$
BEGIN
    ALTER TABLE bismarck._tickets ENABLE ROW LEVEL SECURITY;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
                    WHERE p.polrelid = 'bismarck._tickets'::pg_catalog.regclass
                      AND p.polname = 'issue_ticket') THEN
        CREATE POLICY issue_ticket ON bismarck._tickets FOR INSERT
            WITH CHECK (role = pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER))
                        AND pid = pg_catalog.pg_backend_pid());
    END IF;
END
$bismarck_tickets$;

CREATE FUNCTION bismarck._ticket() RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t uuid := gen_random_uuid();
BEGIN
    INSERT INTO bismarck._tickets (id) VALUES (t);
    RETURN t;
END
$$;
COMMENT ON FUNCTION bismarck._ticket() IS
    'Private: a one-use ticket naming the current role, for the next bookkeeping call of this '
    'session (pass it in the same call: bismarck._set_grant(bismarck._ticket(), ...)).';

CREATE FUNCTION bismarck._redeem(ticket uuid) RETURNS regrole
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r regrole;
BEGIN
    DELETE FROM bismarck._tickets t WHERE t.id = ticket AND t.pid = pg_backend_pid()
    RETURNING t.role INTO r;
    IF r IS NULL THEN
        RAISE EXCEPTION 'bismarck bookkeeping needs a ticket issued in this session'
            USING ERRCODE = '42501',
                  HINT = 'Pass bismarck._ticket() as the first argument, in the same call.';
    END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION bismarck._redeem(uuid) IS
    'Private (called by the bookkeeping functions as their owner): uses up a ticket of this '
    'backend and returns the role it was issued to.';

CREATE FUNCTION bismarck._claim_model(
    ticket uuid, model text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '1s'
AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);
    o regrole;
BEGIN
    IF model IS NULL OR model = '' THEN
        RAISE EXCEPTION 'model_name must be a non-empty string' USING ERRCODE = '22023';
    END IF;
    IF char_length(model) > 200 THEN
        RAISE EXCEPTION 'model_name is % characters long; at most 200 are allowed',
                        char_length(model)
            USING ERRCODE = '22023', HINT = 'Choose a shorter model_name.';
    END IF;
    BEGIN
        SELECT n.owner INTO o FROM bismarck.model_names n WHERE n.model_name = model;
        IF NOT FOUND THEN
            -- A new name: the caller's from now on. Another transaction creating the same name
            -- makes this wait at most lock_timeout (1 s), then refuse.
            INSERT INTO bismarck.model_names AS n (model_name, owner) VALUES (model, c)
            ON CONFLICT ON CONSTRAINT model_names_pkey DO NOTHING;
            IF FOUND THEN
                RETURN;
            END IF;
            SELECT n.owner INTO o FROM bismarck.model_names n WHERE n.model_name = model;
        END IF;
        IF NOT pg_has_role(c, o, 'USAGE') THEN
            RAISE EXCEPTION 'model name "%" belongs to another role', model
                USING ERRCODE = '42501',
                      HINT = 'Choose another model_name: only the owner of a model trains '
                             'new versions of it.';
        END IF;
        -- The name's row lock (only these functions can take it: members have no UPDATE).
        PERFORM 1 FROM bismarck.model_names n WHERE n.model_name = model FOR UPDATE NOWAIT;
    EXCEPTION
        WHEN lock_not_available THEN
            RAISE EXCEPTION 'model "%" is being trained by another transaction', model
                USING ERRCODE = '55P03',
                      DETAIL = 'A bismarck.train_glm call that stores this model has not '
                               'committed.',
                      HINT = 'Wait until it commits, or choose another model_name.';
        WHEN serialization_failure THEN
            RAISE EXCEPTION 'model "%" got a new version after this transaction began', model
                USING ERRCODE = '40001',
                      HINT = 'Train again in a new transaction (or under READ COMMITTED).';
    END;
END
$$;
COMMENT ON FUNCTION bismarck._claim_model(uuid, text) IS
    'Private: before any epoch runs, check that the caller owns (or now creates) a model name and '
    'lock it against other uncommitted trainings of it; refuses at once (at most 1 s when another '
    'transaction is creating the same name).';

CREATE FUNCTION bismarck._store_model(
    ticket uuid, model_name text, source text, label text, loss text, features text[],
    array_feature boolean, coef float8[], intercept float8, classes float8[], params jsonb,
    metrics jsonb, fitted jsonb, kind text, stored jsonb, state bytea)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);
    v integer;
    o regrole;
    src_oid oid;
    src_owner regrole;
    src_name text;
BEGIN
    -- The source by OID and owner, and its name with its schema even when temporary
    -- (pg_temp_N): a reader's own temporary table of that name is never taken for it.
    BEGIN
        SELECT c.oid, c.relowner::regrole, format('%I.%I', n.nspname, c.relname)
          INTO src_oid, src_owner, src_name
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.oid = to_regclass(source);
    EXCEPTION WHEN invalid_name OR syntax_error OR invalid_parameter_value THEN
        src_oid := NULL;
    END;
    UPDATE bismarck.model_names n SET last_version = n.last_version + 1
     WHERE n.model_name = _store_model.model_name AND pg_has_role(c, n.owner, 'USAGE')
    RETURNING n.last_version, n.owner INTO v, o;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'model name "%" belongs to another role', model_name
            USING ERRCODE = '42501', HINT = 'Choose another model_name.';
    END IF;
    INSERT INTO bismarck._models (model_name, version, loss, source, label, features,
                                  array_feature, coef, intercept, classes, params, metrics,
                                  fitted, owner, source_oid, source_owner, kind, stored, state)
    VALUES (model_name, v, loss, coalesce(src_name, source), label, features, array_feature,
            coef, intercept, classes, params, metrics, fitted, o, src_oid, src_owner, kind,
            stored, state);
    RETURN v;
END
$$;
COMMENT ON FUNCTION bismarck._store_model(uuid, text, text, text, text, text[], boolean,
    float8[], float8, float8[], jsonb, jsonb, jsonb, text, jsonb, bytea) IS
    'Private: stores a trained model of any kind (its stored form: stored, state) as the next '
    'version of a name the caller owns (never a number used before).';

CREATE FUNCTION bismarck._delete_versions(
    ticket uuid, model text, version integer)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);
    n integer;
BEGIN
    DELETE FROM bismarck._models m
     WHERE m.model_name = model
       AND (_delete_versions.version IS NULL OR m.version = _delete_versions.version)
       AND (pg_has_role(c, m.owner, 'USAGE') OR EXISTS (
            SELECT 1 FROM bismarck.model_grants g
             WHERE g.model_name = m.model_name AND g.owner = m.owner
               AND pg_has_role(c, g.grantee, 'USAGE')));
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
COMMENT ON FUNCTION bismarck._delete_versions(uuid, text, integer) IS
    'Private: deletes versions of a model the caller owns or was granted; returns how many.';

CREATE FUNCTION bismarck._set_grant(
    ticket uuid, model text, grantee regrole, give boolean)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);
    o regrole;
BEGIN
    SELECT n.owner INTO o FROM bismarck.model_names n
     WHERE n.model_name = model AND pg_has_role(c, n.owner, 'USAGE');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'you do not own a model "%"', model
            USING ERRCODE = '42501',
                  HINT = 'Only the owner of a model (or a superuser) can grant it to others or '
                         'revoke its grants.';
    END IF;
    IF grantee IS NULL THEN
        RAISE EXCEPTION 'no role given' USING ERRCODE = '22004';
    END IF;
    IF give THEN
        INSERT INTO bismarck.model_grants (model_name, grantee, owner) VALUES (model, grantee, o)
        ON CONFLICT ON CONSTRAINT model_grants_pkey DO NOTHING;
    ELSE
        DELETE FROM bismarck.model_grants g
         WHERE g.model_name = model AND g.grantee = _set_grant.grantee;
    END IF;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION bismarck._set_grant(uuid, text, regrole, boolean) IS
    'Private: gives (give) or takes back a grant of a model the caller owns; true if a row changed.';

-- The runs of this backend (pid and start time: a pid alone is reused).
CREATE FUNCTION bismarck._backend_start() RETURNS timestamptz
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT a.backend_start FROM pg_stat_activity a WHERE a.pid = pg_backend_pid()
$$;
COMMENT ON FUNCTION bismarck._backend_start() IS
    'Private: when this backend started (with its pid, it names the backend).';

CREATE FUNCTION bismarck._begin_run(
    ticket uuid, model_name text, source text, params jsonb, work boolean,
    OUT run_id bigint, OUT work_schema text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);
    started timestamptz := bismarck._backend_start();
    held text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM bismarck.model_names n
                    WHERE n.model_name = _begin_run.model_name
                      AND pg_has_role(c, n.owner, 'USAGE')) THEN
        RAISE EXCEPTION 'model name "%" belongs to another role', model_name
            USING ERRCODE = '42501', HINT = 'Choose another model_name.';
    END IF;
    -- One working schema per backend at a time, and none left over by the caller's dead
    -- sessions: earlier runs' schemas must be gone first (the engine drops them, as the caller,
    -- through _dead_runs before it begins a run).
    SELECT r.work_schema INTO held FROM bismarck._training_run r
      JOIN pg_namespace s ON s.nspname = r.work_schema
     WHERE (r.backend_pid = pg_backend_pid() AND r.backend_start IS NOT DISTINCT FROM started)
        OR (r.owner = c AND NOT EXISTS (
                SELECT 1 FROM pg_stat_activity a
                 WHERE a.pid = r.backend_pid
                   AND (r.backend_start IS NULL OR a.backend_start IS NULL
                        OR a.backend_start = r.backend_start)))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'working schema % of an earlier run still exists', held
            USING ERRCODE = '55000',
                  HINT = 'Drop it (bismarck._dead_runs lists your dead runs'' schemas), or train '
                         'again in a new session: the next training cleans it up.';
    END IF;
    IF work THEN
        -- Owned by the role that trains, never by a role others inherit (its members could all
        -- write in the schema): a NOLOGIN role such as bismarck_user is refused.
        IF NOT (SELECT r.rolcanlogin FROM pg_roles r WHERE r.oid = c) THEN
            RAISE EXCEPTION 'role % cannot own a working schema', c
                USING ERRCODE = '42501',
                      DETAIL = 'Training on a table (not a packed one) copies it into a schema '
                               'of the training role; a NOLOGIN (group) role is shared by its '
                               'members.',
                      HINT = 'RESET ROLE (or SET ROLE to a login role) before training, or '
                             'train on a table packed with bismarck.pack.';
        END IF;
        LOOP
            work_schema := 'bismarck_work_' ||
                           substr(md5(random()::text || clock_timestamp()::text), 1, 16);
            EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_namespace s
                                   WHERE s.nspname = _begin_run.work_schema);
        END LOOP;
        EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', work_schema,
                       (SELECT r.rolname FROM pg_roles r WHERE r.oid = c));
    END IF;
    INSERT INTO bismarck._training_run AS r (model_name, source, params, owner, backend_pid,
                                             backend_start, work_schema)
    VALUES (model_name, source, params, c, pg_backend_pid(), started, _begin_run.work_schema)
    RETURNING r.run_id INTO run_id;
END
$$;
COMMENT ON FUNCTION bismarck._begin_run(uuid, text, text, jsonb, boolean) IS
    'Private: records a new training run of a model name the caller owns and, when work, '
    'creates its working schema (empty, owned by the caller, named in the run''s row). Touches '
    'no user table.';

CREATE FUNCTION bismarck._record_epoch(
    ticket uuid, run_id bigint, epoch integer, train_loss float8, validation_loss float8,
    learning_rate float8, rows bigint, seconds float8, workers integer, detail jsonb DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM bismarck._training_run r
                    WHERE r.run_id = _record_epoch.run_id AND r.owner = c
                      AND r.status = 'running' AND r.backend_pid = pg_backend_pid()) THEN
        RAISE EXCEPTION 'run % is not a running training of this session', run_id
            USING ERRCODE = '42501';
    END IF;
    INSERT INTO bismarck._training_epoch (run_id, epoch, train_loss, validation_loss,
                                          learning_rate, rows, seconds, workers, detail)
    VALUES (run_id, epoch, train_loss, validation_loss, learning_rate, rows, seconds, workers,
            detail);
END
$$;
COMMENT ON FUNCTION bismarck._record_epoch(uuid, bigint, integer, float8, float8, float8,
    bigint, float8, integer, jsonb) IS
    'Private: appends one epoch to the history of the caller''s running run.';

CREATE FUNCTION bismarck._end_run(
    ticket uuid, run_id bigint, status text, version integer, message text)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);
BEGIN
    IF status NOT IN ('succeeded', 'failed', 'interrupted') THEN
        RAISE EXCEPTION 'a run ends as succeeded, failed or interrupted, not %', status
            USING ERRCODE = '22023';
    END IF;
    UPDATE bismarck._training_run r
       SET status = _end_run.status, message = _end_run.message, finished_at = clock_timestamp(),
           version = CASE WHEN _end_run.status = 'succeeded' AND EXISTS (
                              SELECT 1 FROM bismarck._models m
                               WHERE m.model_name = r.model_name AND m.owner = r.owner
                                 AND m.version = _end_run.version)
                          THEN _end_run.version END,
           work_schema = CASE WHEN EXISTS (SELECT 1 FROM pg_namespace s
                                            WHERE s.nspname = r.work_schema)
                              THEN r.work_schema END
     WHERE r.run_id = _end_run.run_id AND r.owner = c AND r.status = 'running';
END
$$;
COMMENT ON FUNCTION bismarck._end_run(uuid, bigint, text, integer, text) IS
    'Private: marks the caller''s running run succeeded (with the version it stored), failed or '
    'interrupted; forgets its working schema once that is gone.';

CREATE FUNCTION bismarck._dead_runs(
    ticket uuid)
RETURNS TABLE (run_id bigint, work_schema text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);
    started timestamptz := bismarck._backend_start();
    r record;
    keep boolean;
BEGIN
    -- Tickets of sessions that are gone (issued but never redeemed: a call that failed to run).
    DELETE FROM bismarck._tickets t
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = t.pid);
    -- The caller's own runs whose backend is gone, or is this one (a run of this session that
    -- never ended). SKIP LOCKED: a run another session is cleaning up is left to it.
    FOR r IN
        SELECT t.run_id, t.work_schema, t.status FROM bismarck._training_run t
         WHERE t.owner = c AND (t.status = 'running' OR t.work_schema IS NOT NULL)
           AND ((t.backend_pid = pg_backend_pid()
                 AND t.backend_start IS NOT DISTINCT FROM started)
                OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                                WHERE a.pid = t.backend_pid
                                  AND (t.backend_start IS NULL OR a.backend_start IS NULL
                                       OR a.backend_start = t.backend_start)))
         FOR UPDATE OF t SKIP LOCKED
    LOOP
        -- Only a schema this function's sibling _begin_run made for the caller is handed back
        -- for dropping: the pattern, and still owned by the caller.
        keep := r.work_schema ~ '^bismarck_work_[0-9a-f]{16}$' AND EXISTS (
                    SELECT 1 FROM pg_namespace s
                     WHERE s.nspname = r.work_schema AND s.nspowner = c);
        UPDATE bismarck._training_run t
           SET status = CASE WHEN t.status = 'running' THEN 'interrupted' ELSE t.status END,
               finished_at = coalesce(t.finished_at, clock_timestamp()),
               work_schema = CASE WHEN keep THEN t.work_schema END
         WHERE t.run_id = r.run_id;
        IF keep THEN
            run_id := r.run_id;
            work_schema := r.work_schema;
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;
COMMENT ON FUNCTION bismarck._dead_runs(uuid) IS
    'Private: marks the caller''s runs whose session is gone interrupted; returns the working '
    'schemas among them for the caller to drop (then _forget_work). Touches no user table.';

CREATE FUNCTION bismarck._forget_work(
    ticket uuid, run_id bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);  -- redeemed whatever the run: no ticket outlives it
BEGIN
    UPDATE bismarck._training_run r SET work_schema = NULL
     WHERE r.run_id = _forget_work.run_id AND r.owner = c
       AND NOT EXISTS (SELECT 1 FROM pg_namespace s WHERE s.nspname = r.work_schema);
END
$$;
COMMENT ON FUNCTION bismarck._forget_work(uuid, bigint) IS
    'Private: clears a run''s working schema from its row once the schema is gone.';

CREATE FUNCTION bismarck._register_packed(
    ticket uuid, packed_table regclass, source text, label text, features text[],
    array_feature boolean, n_features integer, dtype text, block_size integer, rows bigint,
    skipped_rows bigint, label_values float8[], seed bigint)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET lock_timeout = '2s' AS $$
DECLARE
    c regrole := bismarck._redeem(ticket);
    o oid;
BEGIN
    SELECT k.relowner INTO o FROM pg_class k WHERE k.oid = packed_table;
    IF NOT FOUND OR NOT pg_has_role(c, o, 'USAGE') THEN
        RAISE EXCEPTION 'only the owner of % can register it as a packed table', packed_table
            USING ERRCODE = '42501';
    END IF;
    -- The caller's rows of tables that are gone (or changed hands) would re-attach to a new
    -- table that reuses the OID: drop them now. Only the caller's, and SKIP LOCKED: a row
    -- another transaction is writing never makes this wait (others' stale rows are ignored by
    -- the packed_tables view and replaced below when their OID comes back).
    DELETE FROM bismarck._packed_tables p
     WHERE p.packed_table IN (
           SELECT q.packed_table FROM bismarck._packed_tables q
            WHERE pg_has_role(c, q.owner, 'USAGE')
              AND NOT EXISTS (SELECT 1 FROM pg_class k
                               WHERE k.oid = q.packed_table AND k.relowner = q.owner)
              FOR UPDATE SKIP LOCKED);
    INSERT INTO bismarck._packed_tables AS p (packed_table, source, label, features,
        array_feature, n_features, dtype, block_size, rows, skipped_rows, label_values, seed,
        owner)
    VALUES (packed_table, source, label, features, array_feature, n_features, dtype,
            block_size, rows, skipped_rows, label_values, seed, o)
    ON CONFLICT ON CONSTRAINT _packed_tables_pkey DO UPDATE
       SET source = excluded.source, label = excluded.label, features = excluded.features,
           array_feature = excluded.array_feature, n_features = excluded.n_features,
           dtype = excluded.dtype, block_size = excluded.block_size, rows = excluded.rows,
           skipped_rows = excluded.skipped_rows, label_values = excluded.label_values,
           seed = excluded.seed, owner = excluded.owner, created_at = now();
EXCEPTION WHEN lock_not_available THEN
    RAISE EXCEPTION 'the registry row of % is being written by another transaction', packed_table
        USING ERRCODE = '55P03',
              HINT = 'Pack again once that transaction has ended.';
END
$$;
COMMENT ON FUNCTION bismarck._register_packed(uuid, regclass, text, text, text[], boolean,
    integer, text, integer, bigint, bigint, float8[], bigint) IS
    'Private: records a packed table the caller owns (bismarck.pack), forgetting rows of '
    'dropped tables. Reads only the catalog.';

------------------------------------------------------------------------------------------------
-- Aggregates: one SGD epoch, feature moments
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck._epoch_step(state bytea, x bytea, y float8, init bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.epoch_transition(plpy, state, x, y, init)
$$;
COMMENT ON FUNCTION bismarck._epoch_step(bytea, bytea, float8, bytea) IS
    'Private: transition of _epoch: one tuple, by the model kind whose magic opens init (a GLM: '
    'the tuple''s loss and gradient, a step per batch_size); x is a float8[] in its in-memory '
    'form (_float8_array_bytes), which costs no conversion.';

CREATE FUNCTION bismarck._epoch_merge(a bytea, b bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.epoch_merge(plpy, a, b)
$$;
COMMENT ON FUNCTION bismarck._epoch_merge(bytea, bytea) IS
    'Private: combine function of _epoch and _epoch_packed: the model kind''s merge of partial '
    'states (a GLM: row-weighted model averaging).';

CREATE FUNCTION bismarck._epoch_final(state bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.epoch_finalize(plpy, state)
$$;
COMMENT ON FUNCTION bismarck._epoch_final(bytea) IS
    'Private: final function of _epoch and _epoch_packed: the model kind''s finalize (a GLM: '
    'applies the pending batch), returns the state.';

CREATE FUNCTION bismarck._shared_create(init bytea) RETURNS bytea
LANGUAGE plpython3u VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.shared_create(plpy, init)
$$;
COMMENT ON FUNCTION bismarck._shared_create(bytea) IS
    'Private: parallel_mode => ''shared'': creates one epoch''s shared-model segment '
    '(base/pgsql_tmp/pgsql_tmpbismarck.<pid>.<random>, mode 0600, a random 128-bit key) from '
    'the init state; returns the shared init that names it. Removes segments of backends that '
    'are gone.';

CREATE FUNCTION bismarck._shared_drop(init bytea) RETURNS boolean
LANGUAGE plpython3u VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.shared_drop(plpy, init)
$$;
COMMENT ON FUNCTION bismarck._shared_drop(bytea) IS
    'Private: removes the shared-model segment named by a shared init (its key must match).';

CREATE FUNCTION bismarck._shared_segments() RETURNS SETOF text
LANGUAGE plpython3u VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.shared_leftovers(plpy)
$$;
COMMENT ON FUNCTION bismarck._shared_segments() IS
    'Private: names of the shared-model segments (parallel_mode => ''shared'') on this server now.';

CREATE FUNCTION bismarck._epoch_query(query text, init bytea) RETURNS bytea
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state bytea;
BEGIN
    EXECUTE query INTO state USING init;
    RETURN state;
END
$$;
COMMENT ON FUNCTION bismarck._epoch_query(text, bytea) IS
    'Private: runs one epoch statement of the training loop inside the server (query: one row '
    'of one bytea column, $1 its init state) with the init state bound, never in the statement '
    'text, and parallel workers allowed (EXECUTE ... USING plans it with CURSOR_OPT_PARALLEL_OK, '
    'which a plan prepared from PL/Python never has); runs with the caller''s privileges.';

CREATE AGGREGATE bismarck._epoch(x bytea, y float8, init bytea) (
    SFUNC = bismarck._epoch_step,
    STYPE = bytea,
    COMBINEFUNC = bismarck._epoch_merge,
    FINALFUNC = bismarck._epoch_final,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._epoch(bytea, float8, bytea) IS
    'Private: one SGD epoch of a model of any kind over rows (features as _float8_array_bytes, '
    'coded label), starting from state init (its first 8 bytes name the kind).';

CREATE FUNCTION bismarck._engine_version(bigint) RETURNS text
LANGUAGE plpython3u IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.engine_version()
$$;
COMMENT ON FUNCTION bismarck._engine_version(bigint) IS
    'Private: the version of the engine embedded in this installation (IMMUTABLE: the engine is '
    'part of the function''s code). Called on an aggregate over a foreign partition, postgres_fdw '
    'evaluates it on the shard, so training compares each shard''s version with its own.';

-- One partition's (or shard's) share of an epoch (averaging => 'partition'): the state before
-- the final function, which the training loop merges across partitions by the kind's rule and
-- finalizes once. No combine function on purpose: nothing can split one partition's epoch
-- over parallel workers (here or on a shard, where postgres_fdw ships it with GROUP BY the
-- partition key), so a partition's model never depends on worker timing; PARALLEL SAFE lets
-- local partitions run whole, side by side, in the workers of a Parallel Append.
CREATE AGGREGATE bismarck._epoch_partial(x bytea, y float8, init bytea) (
    SFUNC = bismarck._epoch_step,
    STYPE = bytea,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._epoch_partial(bytea, float8, bytea) IS
    'Private: one partition''s SGD epoch over rows, returning the unfinalized state (the '
    'training loop merges the partitions'' states with the kind''s rule and finalizes).';

-- Matrix factorisation: the factors stay in the backend that runs the epochs (PL/Python's GD,
-- under a handle that init names), so the state is a few bytes and no call copies the model.
-- A handle cannot reach a parallel worker: no combine function, PARALLEL RESTRICTED (the
-- transitions run in the leader only), and the loop runs its epochs with parallel workers off.
CREATE FUNCTION bismarck._mf_step(state bytea, us integer[], is_ integer[], vs float8[],
                                  init bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.mf.transition_block(plpy, state, us, is_, vs, init)
$$;
COMMENT ON FUNCTION bismarck._mf_step(bytea, integer[], integer[], float8[], bytea) IS
    'Private: transition of _mf_epoch: SGD steps over a block of (dense row index, dense column '
    'index, value) triples on the factors this backend holds for the run init names.';

CREATE FUNCTION bismarck._mf_final(state bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.mf.finalize(plpy, state)
$$;
COMMENT ON FUNCTION bismarck._mf_final(bytea) IS
    'Private: final function of _mf_epoch: the epoch''s triples, skipped triples, steps and '
    'sum of squared errors (the factors stay in the backend).';

CREATE AGGREGATE bismarck._mf_epoch(us integer[], is_ integer[], vs float8[], init bytea) (
    SFUNC = bismarck._mf_step,
    STYPE = bytea,
    FINALFUNC = bismarck._mf_final,
    PARALLEL = RESTRICTED
);
COMMENT ON AGGREGATE bismarck._mf_epoch(integer[], integer[], float8[], bytea) IS
    'Private: one SGD epoch of a matrix factorisation held by this backend (serial).';

CREATE FUNCTION bismarck._mf_begin(model bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.mf.begin(plpy, model)
$$;
COMMENT ON FUNCTION bismarck._mf_begin(bytea) IS
    'Private: holds a serialised matrix factorisation in this backend for a training run '
    '(dropping any earlier run''s) and returns its handle.';

CREATE FUNCTION bismarck._mf_export(handle bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.mf.export(plpy, handle)
$$;
COMMENT ON FUNCTION bismarck._mf_export(bytea) IS
    'Private: the serialised matrix factorisation of a run this backend holds.';

CREATE FUNCTION bismarck._mf_release(handle bytea) RETURNS boolean
LANGUAGE plpython3u PARALLEL RESTRICTED SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.mf.release(plpy, handle)
$$;
COMMENT ON FUNCTION bismarck._mf_release(bytea) IS
    'Private: frees the arrays of a run this backend holds.';

CREATE FUNCTION bismarck._moments_step(state bytea, x bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.moments_transition(plpy, state, x)
$$;
COMMENT ON FUNCTION bismarck._moments_step(bytea, bytea) IS
    'Private: transition of _moments (Welford update).';

CREATE FUNCTION bismarck._moments_merge(a bytea, b bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
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
-- Exact solvers: one pass of loss, gradient and Hessian sums (the merge is an exact sum)
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck._exact_step(state bytea, x bytea, y float8, init bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.exact_transition(plpy, state, x, y, init)
$$;
COMMENT ON FUNCTION bismarck._exact_step(bytea, bytea, float8, bytea) IS
    'Private: transition of _exact_pass: one row''s loss, gradient and Hessian terms.';

CREATE FUNCTION bismarck._exact_step_block(state bytea, block bytea, init bytea, first integer,
                                           stop integer) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.exact_transition_block(plpy, state, block, init, first, stop)
$$;
COMMENT ON FUNCTION bismarck._exact_step_block(bytea, bytea, bytea, integer, integer) IS
    'Private: transition of _exact_pass_packed: the sums of rows first (0-based) to stop '
    '(exclusive; NULL: the end) of a packed block in a few matrix products.';

CREATE FUNCTION bismarck._exact_merge(a bytea, b bytea) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.exact_merge(plpy, a, b)
$$;
COMMENT ON FUNCTION bismarck._exact_merge(bytea, bytea) IS
    'Private: combine function of the exact passes: the sum of two partial states (exact).';

CREATE AGGREGATE bismarck._exact_pass(x bytea, y float8, init bytea) (
    SFUNC = bismarck._exact_step,
    STYPE = bytea,
    COMBINEFUNC = bismarck._exact_merge,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._exact_pass(bytea, float8, bytea) IS
    'Private: loss, gradient and Hessian sums of a GLM at fixed coefficients over rows '
    '(features as _float8_array_bytes, coded label): one Newton or L-BFGS pass.';

CREATE AGGREGATE bismarck._exact_pass_packed(block bytea, init bytea, first integer,
                                             stop integer) (
    SFUNC = bismarck._exact_step_block,
    STYPE = bytea,
    COMBINEFUNC = bismarck._exact_merge,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._exact_pass_packed(bytea, bytea, integer, integer) IS
    'Private: _exact_pass over rows first to stop of packed blocks.';

------------------------------------------------------------------------------------------------
-- Packed storage: many rows per bytea block, one numpy mini-batch step per block
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck._float8_array_bytes(float8[]) RETURNS bytea
LANGUAGE internal IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS 'byteasend';
COMMENT ON FUNCTION bismarck._float8_array_bytes(float8[]) IS
    'Private: an array''s in-memory form (20-byte header for 1-D without NULLs, then raw '
    'little-endian float8), about ten times cheaper than array_send; _pack_block checks it.';

CREATE FUNCTION bismarck._pack_block(rows bytea, labels bytea, d integer, dtype text,
                                     seed bigint) RETURNS bytea
LANGUAGE plpython3u IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.pack_block(plpy, rows, labels, d, dtype, seed)
$$;
COMMENT ON FUNCTION bismarck._pack_block(bytea, bytea, integer, text, bigint) IS
    'Private: concatenated _float8_array_bytes of a block''s rows and of its labels -> one '
    'n x (1 + d) matrix (label, features) of dtype float32 or float64, rows in seeded random order.';

CREATE FUNCTION bismarck._epoch_step_block(state bytea, block bytea, init bytea, first integer,
                                           stop integer) RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.epoch_transition_block(plpy, state, block, init, first, stop)
$$;
COMMENT ON FUNCTION bismarck._epoch_step_block(bytea, bytea, bytea, integer, integer) IS
    'Private: transition of _epoch_packed: rows first (0-based) to stop (exclusive; NULL: the '
    'end) of one packed block, by the model kind whose magic opens init.';

CREATE AGGREGATE bismarck._epoch_packed(block bytea, init bytea, first integer, stop integer) (
    SFUNC = bismarck._epoch_step_block,
    STYPE = bytea,
    COMBINEFUNC = bismarck._epoch_merge,
    FINALFUNC = bismarck._epoch_final,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._epoch_packed(bytea, bytea, integer, integer) IS
    'Private: one SGD epoch of a model of any kind over rows first to stop of packed blocks, '
    'starting from state init.';

CREATE FUNCTION bismarck._moments_step_block(state bytea, block bytea, d integer,
                                             itemsize integer, first integer, stop integer)
RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.moments_transition_block(plpy, state, block, d, itemsize, first, stop)
$$;
COMMENT ON FUNCTION bismarck._moments_step_block(bytea, bytea, integer, integer, integer,
    integer) IS
    'Private: transition of _moments_packed: count, means, spread and range of rows first to '
    'stop of a block.';

CREATE AGGREGATE bismarck._moments_packed(block bytea, d integer, itemsize integer,
                                          first integer, stop integer) (
    SFUNC = bismarck._moments_step_block,
    STYPE = bytea,
    COMBINEFUNC = bismarck._moments_merge,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE bismarck._moments_packed(bytea, integer, integer, integer, integer) IS
    'Private: per-column moments (label, then features) over rows of packed blocks, for '
    'standardisation.';

------------------------------------------------------------------------------------------------
-- Block-shuffled scans without a copy (shuffle => 'blocks'): page groups read by TID range
------------------------------------------------------------------------------------------------

CREATE FUNCTION bismarck._epoch_step_scan(state bytea, xs bytea, ys bytea, groups integer[],
                                        counts integer[], holds integer[], part integer,
                                        split_seed bigint, shuffle_seed bigint, init bytea)
RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.epoch_transition_scan(plpy, state, xs, ys, groups, counts, holds, part, split_seed,
                             shuffle_seed, init)
$$;
COMMENT ON FUNCTION bismarck._epoch_step_scan(bytea, bytea, bytea, integer[], integer[],
    integer[], integer, bigint, bigint, bytea) IS
    'Private: transition of _epoch_scan: one buffer of page groups (features as the '
    '_float8_array_bytes of a 2-D array_agg, raw labels), its validation rows set apart, '
    'its rows shuffled, then the packed-block transition of the kind whose magic opens init.';

CREATE AGGREGATE bismarck._epoch_scan(xs bytea, ys bytea, groups integer[],
                                          counts integer[], holds integer[], part integer,
                                          split_seed bigint, shuffle_seed bigint, init bytea) (
    SFUNC = bismarck._epoch_step_scan,
    STYPE = bytea,
    FINALFUNC = bismarck._epoch_final
);
COMMENT ON AGGREGATE bismarck._epoch_scan(bytea, bytea, integer[], integer[], integer[],
    integer, bigint, bigint, bytea) IS
    'Private: one SGD epoch of any kind over buffers of page groups in the order they arrive.';

-- The validation rows a training pass over page groups reads anyway, kept in the backend for the
-- validation pass that follows (bismarckpy.heldrows): cleared before each training pass, taken
-- by one evaluation; NULL when the kept rows cannot stand in for the SQL pass.
CREATE FUNCTION bismarck._held_clear(rows bigint, width integer) RETURNS boolean
LANGUAGE plpython3u VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.held_clear(plpy, rows, width)
$$;
COMMENT ON FUNCTION bismarck._held_clear(bigint, integer) IS
    'Private: forget the validation rows kept in this backend; the next training pass over page '
    'groups keeps its own (about rows of width features: float32 beyond 256 MB), for the '
    'current role.';

CREATE FUNCTION bismarck._held_evaluate(init bytea, holds integer[], split_seed bigint)
RETURNS bytea
LANGUAGE plpython3u VOLATILE STRICT PARALLEL UNSAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.held_evaluate(plpy, init, holds, split_seed)
$$;
COMMENT ON FUNCTION bismarck._held_evaluate(bytea, integer[], bigint) IS
    'Private: the validation pass of a run without a copy over the validation rows its last '
    'training pass kept in this backend (the same blocks as the SQL pass); NULL when they are '
    'not exactly the run''s validation rows (then the SQL pass runs). Empties the store.';

CREATE FUNCTION bismarck._epoch_step_scan_first(state bytea, xs bytea, ys bytea, js bytea,
                                               shape bigint[], groups integer[],
                                               split_seed bigint, shuffle_seed bigint,
                                               init bytea)
RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.epoch_transition_scan_first(plpy, state, xs, ys, js, shape, groups, split_seed,
                                     shuffle_seed, init)
$$;
COMMENT ON FUNCTION bismarck._epoch_step_scan_first(bytea, bytea, bytea, bytea, bigint[],
    integer[], bigint, bigint, bytea) IS
    'Private: transition of _epoch_scan_first: one buffer of page groups checked and counted '
    'as preparation does, its validation rows drawn, its training rows stepped through by the '
    'kind whose state travels inside.';

CREATE AGGREGATE bismarck._epoch_scan_first(xs bytea, ys bytea, js bytea, shape bigint[],
                                            groups integer[], split_seed bigint,
                                            shuffle_seed bigint, init bytea) (
    SFUNC = bismarck._epoch_step_scan_first,
    STYPE = bytea
);
COMMENT ON AGGREGATE bismarck._epoch_scan_first(bytea, bytea, bytea, bigint[], integer[],
    bigint, bigint, bytea) IS
    'Private: the first SGD epoch of a run prepared from a sample (shuffle => ''blocks''): the '
    'checks and counts of every row folded into the epoch.';

CREATE FUNCTION bismarck._exact_step_scan(state bytea, xs bytea, ys bytea, groups integer[],
                                          counts integer[], holds integer[], part integer,
                                          split_seed bigint, shuffle_seed bigint, init bytea)
RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.exact_transition_scan(plpy, state, xs, ys, groups, counts, holds, part, split_seed,
                               shuffle_seed, init)
$$;
COMMENT ON FUNCTION bismarck._exact_step_scan(bytea, bytea, bytea, integer[], integer[],
    integer[], integer, bigint, bigint, bytea) IS
    'Private: transition of _exact_pass_scan: the exact sums of one buffer of page groups.';

CREATE AGGREGATE bismarck._exact_pass_scan(xs bytea, ys bytea, groups integer[],
                                           counts integer[], holds integer[], part integer,
                                           split_seed bigint, shuffle_seed bigint, init bytea) (
    SFUNC = bismarck._exact_step_scan,
    STYPE = bytea
);
COMMENT ON AGGREGATE bismarck._exact_pass_scan(bytea, bytea, integer[], integer[], integer[],
    integer, bigint, bigint, bytea) IS
    'Private: _exact_pass over the rows of page groups (the separation check of blocks).';

CREATE FUNCTION bismarck._scan_prepare_step(state bytea, xs bytea, ys bytea, grp integer,
                                            shape bigint[], init bytea, seed bigint)
RETURNS bytea
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.scan_prepare(plpy, state, xs, ys, grp, shape, init, seed)
$$;
COMMENT ON FUNCTION bismarck._scan_prepare_step(bytea, bytea, bytea, integer, bigint[], bytea,
    bigint) IS
    'Private: transition of _scan_prepare: one page group''s rows checked and counted, its '
    'validation rows chosen, its training rows added to the moments.';

CREATE AGGREGATE bismarck._scan_prepare(xs bytea, ys bytea, grp integer, shape bigint[],
                                        init bytea, seed bigint) (
    SFUNC = bismarck._scan_prepare_step,
    STYPE = bytea
);
COMMENT ON AGGREGATE bismarck._scan_prepare(bytea, bytea, integer, bigint[], bytea, bigint) IS
    'Private: preparation of block-shuffled scans: page groups in physical order, one read.';

CREATE FUNCTION bismarck._pack_buffer(xs bytea, ys bytea, d integer, block_size integer,
                                      dtype text, seed bigint)
RETURNS TABLE (n integer, data bytea)
LANGUAGE plpython3u PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
B = GD.get(BISMARCK_ENGINE) or bismarck_engine(GD)
return B.pack_buffer(plpy, xs, ys, d, block_size, dtype, seed)
$$;
COMMENT ON FUNCTION bismarck._pack_buffer(bytea, bytea, integer, integer, text, bigint) IS
    'Private: one buffer of page groups (the _float8_array_bytes of a 2-D array_agg, raw '
    'labels) -> packed blocks of its usable rows, shuffled across the buffer.';

------------------------------------------------------------------------------------------------
-- Privileges: members of bismarck_user may use the extension; nobody else (superusers aside).
-- Re-run by every upgrade.
------------------------------------------------------------------------------------------------

DO $bismarck_privileges$
DECLARE
    ext_owner oid := (SELECT e.extowner FROM pg_catalog.pg_extension e
                       WHERE e.extname = 'bismarck');
    f record;
BEGIN
    -- Nobody but the extension's owner may create objects in schema bismarck (a look-alike
    -- function there would win over the extension's own for some calls), whoever granted it.
    FOR f IN
        SELECT DISTINCT a.grantee
          FROM pg_catalog.pg_namespace n, aclexplode(n.nspacl) AS a
         WHERE n.nspname = 'bismarck' AND a.privilege_type = 'CREATE'
           AND a.grantee <> ext_owner
    LOOP
        EXECUTE format('REVOKE CREATE ON SCHEMA bismarck FROM %s CASCADE',
                       CASE WHEN f.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident((SELECT r.rolname FROM pg_catalog.pg_roles r
                                               WHERE r.oid = f.grantee)) END);
    END LOOP;
    REVOKE ALL ON SCHEMA bismarck FROM PUBLIC;
    GRANT USAGE ON SCHEMA bismarck TO bismarck_user;
    -- The registry: only the extension's owner writes it (through the bookkeeping functions);
    -- whatever any role was granted on its tables, views and sequences before is taken back.
    FOR f IN
        SELECT DISTINCT c.oid::regclass AS rel, a.grantee
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_class c ON c.oid = d.objid,
               LATERAL (SELECT x.grantee FROM aclexplode(c.relacl) AS x
                        UNION ALL
                        SELECT x.grantee FROM pg_catalog.pg_attribute t, aclexplode(t.attacl) AS x
                         WHERE t.attrelid = c.oid) AS a
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e
                              WHERE e.extname = 'bismarck')
           AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s CASCADE', f.rel,
                       CASE WHEN f.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident((SELECT r.rolname FROM pg_catalog.pg_roles r
                                               WHERE r.oid = f.grantee)) END);
    END LOOP;
    -- Functions: EXECUTE for members of bismarck_user only; any other grant is taken back.
    FOR f IN
        SELECT DISTINCT p.oid::regprocedure AS fn, a.grantee
          FROM pg_catalog.pg_depend d
          JOIN pg_catalog.pg_proc p ON p.oid = d.objid, aclexplode(p.proacl) AS a
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e
                              WHERE e.extname = 'bismarck')
           AND a.grantee <> p.proowner AND a.grantee <> 0
           AND a.grantee <> 'bismarck_user'::regrole
    LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM %I CASCADE', f.fn,
                       (SELECT r.rolname FROM pg_catalog.pg_roles r WHERE r.oid = f.grantee));
    END LOOP;
    FOR f IN
        SELECT d.objid::regprocedure AS fn
          FROM pg_catalog.pg_depend d
         WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_catalog.pg_extension'::regclass
           AND d.refobjid = (SELECT e.oid FROM pg_catalog.pg_extension e
                              WHERE e.extname = 'bismarck')
    LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f.fn);
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO bismarck_user', f.fn);
    END LOOP;
END
$bismarck_privileges$;
-- Members read (SELECT takes only ACCESS SHARE locks: they cannot stall anyone) and write
-- nothing directly: training, packing, deleting and granting go through the bookkeeping
-- functions above.
GRANT SELECT ON bismarck.models, bismarck.training_history, bismarck.packed_tables
    TO bismarck_user;
GRANT SELECT (model_name, version, owner) ON bismarck._models TO bismarck_user;
GRANT SELECT ON bismarck.model_names, bismarck.model_grants, bismarck._training_run,
    bismarck._training_epoch TO bismarck_user;
-- Tickets: INSERT only (a ROW EXCLUSIVE lock, which stalls no reader or other writer).
GRANT INSERT ON bismarck._tickets TO bismarck_user;
