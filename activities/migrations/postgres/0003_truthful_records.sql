-- retake store, version 3: attempt records that say what really happened.
--   error_type  the kind of an attempt's error: the activity's failure type (BackendRejected,
--               BackendTransient, BudgetExhausted, ...), Timeout or Cancelled; NULL when none
--   note        why an attempt deviated from its strategy (e.g. a partial rewrite without a
--               category breakdown used the revise prompt)
ALTER TABLE retry_attempts ADD COLUMN error_type TEXT NULL;
ALTER TABLE retry_attempts ADD COLUMN note TEXT NULL;
