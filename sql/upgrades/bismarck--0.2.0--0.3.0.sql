-- bismarck 0.2.0 -> 0.3.0 (hand-written): the registry holds models of any kind
-- (bismarckpy.kinds). bismarck._models gains kind (every existing model is a 'glm'), stored (the
-- kind's stored form as jsonb; for GLMs the loss, coefficients and intercept, copied from their
-- columns) and state (bytea, for kinds with large arrays); loss, coef and intercept stay as
-- columns, required of GLMs only. Existing models keep their rows, owners, versions and grants;
-- the views and functions are re-created from sql/bismarck.sql after this script.
SET LOCAL search_path = pg_catalog, pg_temp;

-- IF NOT EXISTS: development builds of 0.2.0 with matrix factorisation already added kind and
-- state (their 'mf' rows keep their factors in state; stored gets their mean and rank below).
ALTER TABLE bismarck._models
    ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'glm',
    ADD COLUMN IF NOT EXISTS stored jsonb,
    ADD COLUMN IF NOT EXISTS state bytea;
UPDATE bismarck._models m
   SET stored = CASE WHEN m.kind = 'mf'
                     -- state's header (bismarckpy.factorization.dumps): magic, then n_rows,
                     -- n_cols and rank as little-endian int64 at bytes 4, 12 and 20, then mean
                     THEN (SELECT jsonb_object_agg(f.key, (SELECT sum(get_byte(m.state, f.at + k)
                                                                     ::bigint << (8 * k))
                                                             FROM generate_series(0, 6) AS k))
                             FROM (VALUES ('n_rows', 4), ('n_cols', 12), ('rank', 20))
                                  AS f(key, at))
                          || jsonb_build_object('mean', m.intercept)
                     ELSE jsonb_build_object('loss', m.loss, 'coef', to_jsonb(m.coef),
                                             'intercept', to_jsonb(m.intercept)) END
 WHERE m.stored IS NULL;
ALTER TABLE bismarck._models
    ALTER COLUMN stored SET NOT NULL,
    ALTER COLUMN loss DROP NOT NULL,
    ALTER COLUMN coef DROP NOT NULL,
    ALTER COLUMN intercept DROP NOT NULL,
    ADD CONSTRAINT glm_columns CHECK (kind <> 'glm' OR (loss IS NOT NULL AND coef IS NOT NULL
                                                        AND intercept IS NOT NULL));
COMMENT ON TABLE bismarck._models IS
    'Private: trained models of every kind, one row per version (read them through '
    'bismarck.models).';
