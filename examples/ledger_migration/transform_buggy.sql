-- A faulty version of transform.sql, used by `--inject-bugs`: the kind of
-- data-quality bugs a first transformation has, which repair cannot fix and
-- verification must find. The faults (mirrored by `faults_of` in
-- examples/ledger_migration/faults.rs; a dropped transaction has no other fault):
--   dropped:    id % 1499 = 2 -> both entries of the transaction are missing
--   wrong sign: id % 1201 = 3 -> the debit entry (2T) is positive
--   rounding:   id % 997 = 1  -> the credit entry (2T + 1) is rounded to whole units
SELECT t.id * 2 AS id,
       t.id::text AS tx_id,
       t.from_account AS account,
       CASE WHEN t.id % 1201 = 3 THEN 1 ELSE -1 END * (t.amount::numeric * 100)::bigint AS amount_minor,
       t.currency,
       t.created_at
  FROM transactions t
 WHERE t.id % 1499 <> 2
UNION ALL
SELECT t.id * 2 + 1,
       t.id::text,
       t.to_account,
       CASE WHEN t.id % 997 = 1 THEN round(t.amount::numeric) * 100
            ELSE t.amount::numeric * 100 END::bigint,
       t.currency,
       t.created_at
  FROM transactions t
 WHERE t.id % 1499 <> 2
