-- Training, prediction and evaluation from SQL on a small table (the heart-attack example).
CREATE TABLE patients (id int, treatment int, trait_anxiety float8, second_attack boolean);
INSERT INTO patients VALUES
  (1, 1, 70, true), (2, 1, 80, true), (3, 1, 50, false), (4, 0, 60, true), (5, 0, 40, false),
  (6, 0, 65, true), (7, 0, 75, true), (8, 0, 80, true), (9, 0, 70, true), (10, 0, 60, true),
  (11, 1, 65, false), (12, 1, 50, false), (13, 1, 45, false), (14, 1, 35, false),
  (15, 1, 40, false), (16, 1, 50, false), (17, 0, 55, false), (18, 0, 45, false),
  (19, 0, 50, true), (20, 0, 60, false);

SELECT model_name, version, converged
  FROM bismarck.train_glm(source => 'patients', label => 'second_attack',
                          features => ARRAY['treatment', 'trait_anxiety'],
                          model_name => 'heart', loss => 'logistic', penalty => 'none',
                          learning_rate => 'bold_driver', eta0 => 1, batch_size => 0,
                          max_epochs => 2000, tol => 1e-9, n_iter_no_change => 10, seed => 42);

-- maximum-likelihood coefficients (the same as a Logit fit) to 2 decimals
SELECT model_name, version, loss, features, array_length(coef, 1) AS n_coef,
       round(coef[1]::numeric, 2) AS treatment, round(coef[2]::numeric, 2) AS anxiety,
       round(intercept::numeric, 2) AS intercept, classes
  FROM bismarck.models WHERE model_name = 'heart';

SELECT id, round(bismarck.predict('heart', ARRAY[treatment, trait_anxiety]::float8[])::numeric, 3)
       AS p, bismarck.predict_class('heart', ARRAY[treatment, trait_anxiety]::float8[], NULL::boolean) AS class
  FROM patients ORDER BY id LIMIT 4;

SELECT metric, round(value::numeric, 4) AS value FROM bismarck.evaluate('heart', 'patients');

-- a second run adds a version; predict/evaluate take the latest or a given one
SELECT version FROM bismarck.train_glm('patients', 'second_attack',
                                       ARRAY['treatment', 'trait_anxiety'], 'heart', seed => 1);
SELECT model_name, version FROM bismarck.models ORDER BY version;
SELECT round(bismarck.predict('heart', ARRAY[1, 70]::float8[], version => 1)::numeric, 3) AS v1;

-- per-epoch history
SELECT version, status, count(*) > 0 AS has_epochs, min(epoch) AS first_epoch
  FROM bismarck.training_history WHERE model_name = 'heart' GROUP BY 1, 2 ORDER BY 1;

-- linear regression on a float8[] column; NULL and NaN rows are skipped and counted
CREATE TABLE houses (x float8[], price float8);
INSERT INTO houses SELECT ARRAY[i, i % 7]::float8[], 3 * i - 2 * (i % 7) + 5 FROM generate_series(1, 200) i;
INSERT INTO houses VALUES (NULL, 1), (ARRAY[1, 2], NULL), (ARRAY['NaN', 1]::float8[], 2),
                          (ARRAY[1, NULL]::float8[], 3), (ARRAY[1, 1], 'Infinity');
SELECT converged FROM bismarck.train_glm('houses', 'price', ARRAY['x'], 'houses', loss => 'squared',
       penalty => 'none', learning_rate => 'bold_driver', batch_size => 0, eta0 => 0.5,
       max_epochs => 3000, tol => 1e-12, n_iter_no_change => 20);
SELECT round(coef[1]::numeric, 3) AS c1, round(coef[2]::numeric, 3) AS c2,
       round(intercept::numeric, 3) AS b, metrics -> 'rows' AS rows,
       metrics -> 'skipped_rows' AS skipped
  FROM bismarck.models WHERE model_name = 'houses';
SELECT metric, round(value::numeric, 3) AS value FROM bismarck.evaluate('houses', 'houses');

-- hinge loss: signed margins and -1/+1 classes
CREATE TABLE sep (a float8, b float8, label int);
INSERT INTO sep SELECT i, i % 5, CASE WHEN i > 10 THEN 1 ELSE -1 END FROM generate_series(1, 20) i;
-- the default tol: hinge's own step scale and 1 / epoch decay get every one of these separable
-- rows right (with 1 / L and 1 / sqrt(epoch) it stopped at epoch 28 with one row wrong)
SELECT version FROM bismarck.train_glm('sep', 'label', ARRAY['a', 'b'], 'svm', loss => 'hinge',
                                       penalty => 'none', max_epochs => 200, seed => 3);
SELECT metric, value FROM bismarck.evaluate('svm', 'sep') WHERE metric IN ('accuracy', 'rows');
SELECT bismarck.predict_class('svm', ARRAY[1, 1]) AS low, bismarck.predict_class('svm', ARRAY[20, 1]) AS high;

SELECT bismarck.delete_model('svm');
SELECT count(*) FROM bismarck.models WHERE model_name = 'svm';

-- training inside a transaction leaves the session's settings as they were
SELECT current_setting('synchronize_seqscans') AS sync0, current_setting('enable_sort') AS sort0,
       current_setting('parallel_leader_participation') AS leader0,
       current_setting('max_parallel_workers_per_gather') AS workers0 \gset
BEGIN;
SELECT epochs FROM bismarck.train_glm('patients', 'second_attack', ARRAY['treatment', 'trait_anxiety'],
       'settings_rows', packed => false, parallel => 2, max_epochs => 2);
SELECT epochs FROM bismarck.train_glm('patients', 'second_attack', ARRAY['treatment', 'trait_anxiety'],
       'settings_packed', parallel => 0, max_epochs => 2);
SELECT current_setting('synchronize_seqscans') = :'sync0' AS sync,
       current_setting('enable_sort') = :'sort0' AS sort,
       current_setting('parallel_leader_participation') = :'leader0' AS leader,
       current_setting('max_parallel_workers_per_gather') = :'workers0' AS workers;
COMMIT;
