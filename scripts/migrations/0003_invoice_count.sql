-- 0003: the number of invoices, kept by the writes instead of counted by
-- every list request.
--
-- `SELECT count(*) FROM invoices` scans the whole table (or its index), so
-- its cost grows with the table: at 10,000 rows it was 0.9 of the 1.05 ms a
-- list page took in PostgreSQL.  Here every statement that inserts or
-- deletes invoices adds its row count to one of 16 slots, in the same
-- transaction, and a reader sums the 16 slots in its own snapshot.  The
-- slots spread concurrent writers (one per backend, chosen by its pid) so
-- that they do not queue on one row lock.  Statement-level triggers with
-- transition tables cost one UPDATE per statement, not one per row, so a
-- bulk load stays fast.

CREATE TABLE invoices_count (
    slot    smallint    PRIMARY KEY CHECK (slot BETWEEN 0 AND 15),
    n       bigint      NOT NULL
);

-- no insert or delete may run while the starting count is taken
LOCK TABLE invoices IN SHARE MODE;

INSERT INTO invoices_count (slot, n)
SELECT s, CASE WHEN s = 0 THEN (SELECT count(*) FROM invoices) ELSE 0 END
FROM generate_series(0, 15) s;

CREATE FUNCTION invoices_count_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    added bigint;
BEGIN
    SELECT count(*) INTO added FROM inserted_rows;
    IF added > 0 THEN
        UPDATE invoices_count SET n = n + added
        WHERE slot = pg_backend_pid() % 16;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION invoices_count_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    removed bigint;
BEGIN
    SELECT count(*) INTO removed FROM deleted_rows;
    IF removed > 0 THEN
        UPDATE invoices_count SET n = n - removed
        WHERE slot = pg_backend_pid() % 16;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION invoices_count_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE invoices_count SET n = 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER invoices_count_insert AFTER INSERT ON invoices
    REFERENCING NEW TABLE AS inserted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_count_inserted();

CREATE TRIGGER invoices_count_delete AFTER DELETE ON invoices
    REFERENCING OLD TABLE AS deleted_rows
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_count_deleted();

CREATE TRIGGER invoices_count_truncate AFTER TRUNCATE ON invoices
    FOR EACH STATEMENT EXECUTE FUNCTION invoices_count_truncated();
