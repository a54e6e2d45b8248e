-- Run once by the postgres image on an empty volume: the database of retake's store (Temporal's
-- auto-setup creates its own databases, `temporal` and `temporal_visibility`).
CREATE DATABASE retake;
