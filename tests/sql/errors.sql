-- Bad input gets a clear error (SQLSTATE, detail, hint) and writes nothing.
CREATE TABLE t (id int, a float8, b float8, name text, y int, yy float8, arr float8[]);
INSERT INTO t SELECT i, i, i % 3, 'n' || i, i % 2, i, ARRAY[i, i % 3] FROM generate_series(1, 50) i;
CREATE TABLE empty_t (a float8, y int);
CREATE TABLE nulls_t (a float8, y int);
INSERT INTO nulls_t VALUES (NULL, 1), ('NaN', 0), (1, NULL);
CREATE TABLE ragged (x float8[], y int);
INSERT INTO ragged VALUES (ARRAY[1, 2], 0), (ARRAY[1, 2, 3], 1);

-- no such table / column
SELECT * FROM bismarck.train_glm('nope', 'y', ARRAY['a']);
SELECT * FROM bismarck.train_glm('t', 'y', ARRAY['a', 'c']);
SELECT * FROM bismarck.train_glm('t', 'why', ARRAY['a']);
-- non-numeric feature, text label of a regression, label among the features
SELECT * FROM bismarck.train_glm('t', 'y', ARRAY['a', 'name']);
SELECT * FROM bismarck.train_glm('t', 'name', ARRAY['a'], loss => 'squared');
SELECT * FROM bismarck.train_glm('t', 'y', ARRAY['a', 'y']);
-- empty table, no usable rows, ragged arrays, a label that is not binary
SELECT * FROM bismarck.train_glm('empty_t', 'y', ARRAY['a']);
SELECT * FROM bismarck.train_glm('nulls_t', 'y', ARRAY['a']);
SELECT * FROM bismarck.train_glm('ragged', 'y', ARRAY['x']);
SELECT * FROM bismarck.train_glm('t', 'yy', ARRAY['a']);
-- bad parameters
SELECT * FROM bismarck.train_glm('t', 'y', ARRAY['a'], loss => 'log');
SELECT * FROM bismarck.train_glm('t', 'y', ARRAY['a'], alpha => -1);
SELECT * FROM bismarck.train_glm('t', 'y', ARRAY['a'], eta0 => 0);
SELECT * FROM bismarck.train_glm('t', 'y', ARRAY['a'], l1_ratio => 1.5);
SELECT * FROM bismarck.train_glm('t', 'y', ARRAY['a'], validation_fraction => 'NaN');
-- a diverging learning rate stops with an error naming it
SELECT * FROM bismarck.train_glm('t', 'yy', ARRAY['a', 'b'], loss => 'squared',
                                 learning_rate => 'constant', eta0 => 1000, standardize => false);
-- nothing was written, the user's tables are intact, no working copies are left behind
SELECT count(*) AS models FROM bismarck.models;
SELECT count(*) AS rows_in_t FROM t;
SELECT count(*) AS work_tables FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'bismarck' AND c.relname ~ '^_(train|valid)_';
-- a cancelled run (statement_timeout) leaves no model version either
CREATE TABLE big AS SELECT i::float8 AS a, (i % 2) AS y FROM generate_series(1, 20000) i;
SET statement_timeout = '300ms';
SELECT * FROM bismarck.train_glm('big', 'y', ARRAY['a'], max_epochs => 1000, tol => 0,
                                 n_iter_no_change => 1000);
RESET statement_timeout;
SELECT count(*) AS models FROM bismarck.models;
SELECT count(*) AS work_tables FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'bismarck' AND c.relname ~ '^_(train|valid)_';
-- predict / evaluate errors
SELECT bismarck.predict('missing', ARRAY[1, 2]::float8[]);
SELECT model_name, version, epochs FROM bismarck.train_glm('t', 'y', ARRAY['a', 'b'], model_name => 'm', max_epochs => 3);
SELECT bismarck.predict('m', ARRAY[1, 2, 3]::float8[]);
SELECT bismarck.predict('m', ARRAY[1, 2]::float8[], version => 7);
SELECT * FROM bismarck.evaluate('m', 'nope');
SELECT * FROM bismarck.evaluate('m', 'empty_t');
-- packed storage: needs shuffle 'once'; refuses arrays it cannot read as 1-D float8
SELECT * FROM bismarck.train_glm('t', 'y', ARRAY['a'], packed => true, shuffle => 'always');
CREATE TABLE grid (x float8[], y int);
INSERT INTO grid VALUES (ARRAY[[1, 2]]::float8[], 0), (ARRAY[[3, 4]]::float8[], 1);
SELECT * FROM bismarck.train_glm('grid', 'y', ARRAY['x']);
SELECT model_name, version FROM bismarck.train_glm('grid', 'y', ARRAY['x'], 'grid_rows',
                                                   packed => false, max_epochs => 2);
-- class labels (issue 12): predict never answers a class index; numeric classes must be float8s
CREATE TABLE kinds_t (x float8[], species text, big bigint, half float8, flag boolean);
INSERT INTO kinds_t SELECT ARRAY[(i % 3)::float8, (i % 5)::float8],
       (ARRAY['setosa', 'versicolor', 'virginica'])[i % 3 + 1],
       9007199254740992 + i % 3, i % 3 + 0.5, i % 2 = 0 FROM generate_series(1, 60) AS i;
SELECT model_name FROM bismarck.train_glm('kinds_t', 'species', ARRAY['x'], 'sp',
                                          loss => 'softmax', max_epochs => 1, seed => 1);
SELECT bismarck.predict('sp', ARRAY[1, 2]::float8[]);
SELECT bismarck.predict_class('sp', ARRAY[1, 2]::float8[]);
SELECT * FROM bismarck.train_glm('kinds_t', 'big', ARRAY['x'], 'bg', loss => 'softmax');
SELECT * FROM bismarck.train_mlp('kinds_t', 'big', ARRAY['x'], 'bg');
SELECT model_name FROM bismarck.train_glm('kinds_t', 'half', ARRAY['x'], 'hf',
                                          loss => 'softmax', max_epochs => 1, seed => 1);
SELECT bismarck.classes('hf');
SELECT bismarck.predict_class('hf', ARRAY[1, 2]::float8[], NULL::bigint);
CREATE TABLE kinds_text AS SELECT x, half::text AS half FROM kinds_t;
SELECT * FROM bismarck.evaluate('hf', 'kinds_text');
SELECT * FROM bismarck.train_glm('kinds_t', NULL, ARRAY['x'], 'nl');
SELECT * FROM bismarck.train_mlp('kinds_t', 'species', ARRAY['x', 'x'], 'dup');
SELECT * FROM bismarck.train_mf('kinds_t', NULL, 'x', 'big', 'mf');
SELECT count(*) AS models FROM bismarck.models WHERE model_name IN ('bg', 'nl', 'dup', 'mf');
SELECT bismarck.predict(NULL, ARRAY[1, 2]::float8[]);
SELECT bismarck.grant_model(NULL, 'postgres');
SELECT bismarck.revoke_model(NULL, 'postgres');
