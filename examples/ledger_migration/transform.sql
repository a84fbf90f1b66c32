-- The reviewed transformation of the ledger migration example
-- (`cargo run --release --example ledger_migration`), run by the backfill's
-- generate step on the legacy database and used as the verification's
-- mapping.
--
-- Legacy: transactions(id, from_account, to_account, amount text "12.34",
-- currency, created_at), one row per transaction, no balances.
-- New: ledger_entries, double entry. Transaction T becomes
--   entry 2T:     the debit of from_account (negative amount, minor units)
--   entry 2T + 1: the credit of to_account (positive amount)
-- balance_after and prev_id stay NULL here: the repair step derives them
-- (running sums and links between an account's entries, in id order).
SELECT t.id * 2 AS id,
       t.id::text AS tx_id,
       t.from_account AS account,
       -((t.amount::numeric * 100)::bigint) AS amount_minor,
       t.currency,
       t.created_at
  FROM transactions t
UNION ALL
SELECT t.id * 2 + 1,
       t.id::text,
       t.to_account,
       (t.amount::numeric * 100)::bigint,
       t.currency,
       t.created_at
  FROM transactions t
