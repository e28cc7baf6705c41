-- Run once by the postgres image when it initializes the data directory.
CREATE EXTENSION IF NOT EXISTS bismarck CASCADE;
