-- bismarck 0.2.0 -> 0.3.0 (hand-written): the registry holds models of any kind
-- (bismarckpy.kinds). bismarck._models gains kind (every existing model is a 'glm'), stored (the
-- kind's stored form as jsonb; for GLMs the loss, coefficients and intercept, copied from their
-- columns) and state (bytea, for kinds with large arrays); loss, coef and intercept stay as
-- columns, required of GLMs only. Existing models keep their rows, owners, versions and grants;
-- the views and functions are re-created from sql/bismarck.sql after this script.
SET LOCAL search_path = pg_catalog, pg_temp;

ALTER TABLE bismarck._models
    ADD COLUMN kind text NOT NULL DEFAULT 'glm',
    ADD COLUMN stored jsonb,
    ADD COLUMN state bytea;
UPDATE bismarck._models m
   SET stored = jsonb_build_object('loss', m.loss, 'coef', to_jsonb(m.coef),
                                   'intercept', to_jsonb(m.intercept));
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
