-- Per-epoch detail (averaging => 'partition': each partition's rows and losses).
ALTER TABLE bismarck._training_epoch ADD COLUMN IF NOT EXISTS detail jsonb;
