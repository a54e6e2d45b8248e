-- retake store, version 7: who changed each scene type's retry policy, and to what.
--   policy_changes  one row per policy stored (PUT /scene-types/{id}/retry-policy, the console's
--                   policy forms, `retake policy set`), written in the transaction that stores
--                   it: the scene type, when (RFC 3339), who (`api:admin mina`, `cli:jun`) and
--                   the policy as stored (JSON text). Rows are never changed or deleted.
CREATE TABLE policy_changes (
    id         BIGSERIAL PRIMARY KEY,
    scene_type TEXT NOT NULL,
    changed_at TEXT NOT NULL,
    changed_by TEXT NOT NULL,
    policy     TEXT NOT NULL
);

CREATE INDEX policy_changes_scene_type ON policy_changes (scene_type, id);
