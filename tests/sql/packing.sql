-- Packed tables: written once by bismarck.pack, reused by several models and losses.
CREATE TABLE pts (id int, a float8, b float8, flag boolean, price float8);
INSERT INTO pts SELECT i, i % 17, (i * 7) % 13, (i % 17) + ((i * 7) % 13) > 14,
                       2 * (i % 17) - 3 * ((i * 7) % 13) + 1
  FROM generate_series(1, 3000) i;
INSERT INTO pts VALUES (0, NULL, 1, true, 1);
SELECT packed_table, blocks, rows, skipped_rows
  FROM bismarck.pack('pts', 'flag', ARRAY['a', 'b'], 'pts_packed', block_size => 256, seed => 1);
SELECT packed_table, source, label, features, n_features, dtype, block_size, rows, label_values
  FROM bismarck.packed_tables;
SELECT count(*) AS blocks, sum(n) AS rows, min(n) > 150 AS full_enough,
       pg_column_size(data) = 16 + 8 * 3 + 4 * 3 * n AS raw_float32 FROM pts_packed GROUP BY 4;
-- one packed table, two classifiers
SELECT model_name, version, converged FROM bismarck.train_glm('pts_packed', 'flag', ARRAY['a', 'b'],
       'flag_logistic', max_epochs => 50, seed => 2);
SELECT model_name, version FROM bismarck.train_glm('pts_packed', 'flag', ARRAY['a', 'b'],
       'flag_svm', loss => 'hinge', max_epochs => 50, seed => 2, validation_fraction => 0.25);
SELECT metric, round(value::numeric, 2) AS value FROM bismarck.evaluate('flag_logistic', 'pts')
 WHERE metric IN ('rows', 'accuracy', 'skipped_rows');
SELECT metric, round(value::numeric, 2) AS value FROM bismarck.evaluate('flag_svm', 'pts')
 WHERE metric IN ('rows', 'accuracy');
SELECT model_name, source, params->>'packed' AS packed, metrics->'validation_rows' > '0' AS held_out
  FROM bismarck.models ORDER BY 1;
-- a regression on a packed copy of the same table, with the target as its label
SELECT rows FROM bismarck.pack('pts', 'price', ARRAY['a', 'b'], 'price_packed', dtype => 'float64');
SELECT converged FROM bismarck.train_glm('price_packed', 'price', ARRAY['a', 'b'], 'price',
       loss => 'squared', penalty => 'none', batch_size => 0, learning_rate => 'bold_driver',
       eta0 => 0.5, max_epochs => 500, tol => 1e-12, n_iter_no_change => 20);
SELECT round(coef[1]::numeric, 3) AS a, round(coef[2]::numeric, 3) AS b,
       round(intercept::numeric, 3) AS c FROM bismarck.models WHERE model_name = 'price';
-- errors: the name is taken; other columns than packed; a packed table cannot be reshuffled
SELECT * FROM bismarck.pack('pts', 'flag', ARRAY['a', 'b'], 'pts_packed');
SELECT * FROM bismarck.train_glm('pts_packed', 'flag', ARRAY['a'], 'x');
SELECT * FROM bismarck.train_glm('pts_packed', 'flag', ARRAY['a', 'b'], 'x', shuffle => 'always');
SELECT * FROM bismarck.pack('pts', 'flag', ARRAY['a', 'b'], 'p2', block_size => 0);
SELECT count(*) AS models_named_x FROM bismarck.models WHERE model_name = 'x';
