-- bismarck 0.1.0 -> 0.2.0 (hand-written): owners, a version counter per model name (numbers
-- are never reused), grants, row-level security; models and packed_tables become filtering views
-- over the private tables _models and _packed_tables. Existing models keep their rows and belong
-- to the role that runs the upgrade (a superuser), who can grant them with bismarck.grant_model.
-- Privileges are re-applied from sql/bismarck.sql after this script: members of bismarck_user
-- keep only SELECT on the registry, and nobody but the extension's owner keeps CREATE on schema
-- bismarck (0.1.0's README had users grant it).
SET LOCAL search_path = pg_catalog, pg_temp;

ALTER TABLE bismarck.models RENAME TO _models;
ALTER TABLE bismarck._models
    ADD COLUMN owner regrole NOT NULL DEFAULT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER));
-- The source table's OID and owner when trained (NULL for 0.1.0's models: fitted is then shown
-- by name, never through a temporary schema).
ALTER TABLE bismarck._models ADD COLUMN source_oid oid, ADD COLUMN source_owner regrole;
COMMENT ON TABLE bismarck._models IS
    'Private: trained models, one row per version (read them through bismarck.models).';

ALTER TABLE bismarck.packed_tables RENAME TO _packed_tables;
-- Each row names its table's owner: a row whose table is gone or changed hands is ignored (a new
-- table that reuses the OID does not inherit it).
DELETE FROM bismarck._packed_tables p
 WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = p.packed_table);
ALTER TABLE bismarck._packed_tables ADD COLUMN owner regrole;
UPDATE bismarck._packed_tables p SET owner = c.relowner::regrole
  FROM pg_class c WHERE c.oid = p.packed_table;
ALTER TABLE bismarck._packed_tables ALTER COLUMN owner SET NOT NULL;
COMMENT ON TABLE bismarck._packed_tables IS
    'Private: packed tables written by bismarck.pack (read them through bismarck.packed_tables).';

ALTER TABLE bismarck._training_run
    ADD COLUMN owner regrole NOT NULL DEFAULT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER)),
    ADD COLUMN backend_start timestamptz,
    ADD COLUMN work_schema text;

CREATE TABLE bismarck.model_names (
    model_name   text    PRIMARY KEY,
    owner        regrole NOT NULL DEFAULT pg_catalog.to_regrole(pg_catalog.quote_ident(CURRENT_USER)),
    last_version integer NOT NULL DEFAULT 0
);
-- Versions ever stored or recorded by a run count, so deleted numbers are not given again.
INSERT INTO bismarck.model_names (model_name, last_version)
SELECT model_name, max(version)
  FROM (SELECT model_name, version FROM bismarck._models
        UNION ALL
        SELECT model_name, version FROM bismarck._training_run WHERE version IS NOT NULL) AS v
 GROUP BY model_name;

CREATE TABLE bismarck.model_grants (
    model_name text        NOT NULL,
    grantee    regrole     NOT NULL,
    owner      regrole     NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, grantee)
);

-- Working copies of 0.1.0 runs lived in schema bismarck; 0.2.0 keeps them in per-run schemas.
DO $bismarck_migrate$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT c.oid::regclass AS rel FROM pg_class c
              WHERE c.relnamespace = 'bismarck'::regnamespace AND c.relkind = 'r'
                AND c.relname ~ '^_(train|valid)_[0-9]+$'
    LOOP
        EXECUTE format('DROP TABLE %s', t.rel);
    END LOOP;
END
$bismarck_migrate$;

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

