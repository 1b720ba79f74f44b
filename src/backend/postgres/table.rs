//! The state table's name and shape. Its name is always schema-qualified
//! (`public` unless told otherwise), so that it never depends on a role's
//! `search_path`; it has one row per advisory key, whatever lock name took
//! the key; and it carries a fixed comment, so that every state table of a
//! database can be found. Created when missing, migrated from the older
//! shape (one row per lock name) when found.

use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;

use super::failure::Failure;
use super::session::Session;
use crate::error::{Error, Result};

/// The schema of a state table named without one.
pub(super) const DEFAULT_SCHEMA: &str = "public";

/// The comment that marks a table as an onlyone state table.
pub(super) const MARKER: &str = "onlyone state table";

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
pub(super) const MAX_IDENTIFIER_LEN: usize = 63;

/// The table's name unless told otherwise.
pub(super) const DEFAULT_TABLE_NAME: &str = "onlyone_locks";

/// How often creating or migrating the table is tried again when the
/// catalog shows it half made (created by a session that did not take
/// [`Table::creation_key`]).
const CREATE_ATTEMPTS: usize = 5;

/// How long to wait before looking again at a table shown half made.
const CREATE_PAUSE: Duration = Duration::from_millis(50);

/// How long a migration waits for its ACCESS EXCLUSIVE lock on the table,
/// at most (and not past the start's timeout). While it waits, every other
/// statement on the table queues behind it: holders' row checks (which
/// skip a beat) and other starters.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Columns that older versions of the table lacked, and their type.
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("stop_within_ms", "bigint"),
    ("owed_ms", "bigint"),
    ("stopped_token", "bigint"),
];

/// The function, in the table's schema, behind the guard triggers.
const GUARD_FUNCTION: &str = "onlyone_state_guard";

/// The guard triggers: one per row for UPDATE and DELETE, one per
/// statement for TRUNCATE.
const GUARD_TRIGGERS: [&str; 2] = ["onlyone_guard_rows", "onlyone_guard_truncate"];

/// Their `pg_trigger.tgtype`: ROW | BEFORE | DELETE | UPDATE, and
/// BEFORE | TRUNCATE.
const GUARD_TRIGGER_TYPES: [i16; 2] = [1 | 2 | 8 | 16, 2 | 32];

/// The settings (`pg_proc.proconfig`) of the functions onlyone creates:
/// names in their bodies are the system's, whoever calls them.
const FUNCTION_CONFIG: &str = "search_path=pg_catalog, pg_temp";

/// How onlyone creates one of its functions, beyond its body.
#[derive(Debug)]
struct Made {
    /// "guard" or "fence", for messages.
    role: &'static str,
    security_definer: bool,
    /// `pg_proc.prorettype`, as `regtype` prints it.
    returns: &'static str,
}

/// The guard: a trigger function that runs with the rights of whoever
/// writes the row.
const GUARD_MADE: Made = Made {
    role: "guard",
    security_definer: false,
    returns: "trigger",
};

/// The fence: runs with its owner's rights (see [`Table::fence_ddl`]), so
/// it must be onlyone's, owned by someone the table's writers trust.
const FENCE_MADE: Made = Made {
    role: "fence",
    security_definer: true,
    returns: "void",
};

/// The guard's body. Rows are never deleted and the table never truncated
/// (onlyone itself does neither): a missing row reads as a lock never
/// used, so the next holder would start at once beside a command that may
/// still run, with token 1 again. A row's key never changes and its token
/// never goes back. Only the session that holds the row's advisory lock
/// changes the row, except for `stop`, which may mark the row's current
/// token stopped (`stopped_token`) from a session of its own.
const GUARD_BODY: &str = "\
BEGIN \
  IF TG_OP = 'TRUNCATE' THEN \
    RAISE EXCEPTION 'onlyone: the state table %.% cannot be truncated', TG_TABLE_SCHEMA, TG_TABLE_NAME \
      USING ERRCODE = 'restrict_violation', \
        DETAIL = 'Its rows keep each lock''s fencing token and whether its last holder released it cleanly; without them the next holder would start at once, beside a command that may still run, with token 1 again.', \
        HINT = 'Drop the table only when no onlyone uses it.'; \
  END IF; \
  IF TG_OP = 'DELETE' THEN \
    RAISE EXCEPTION 'onlyone: the row of lock ''%'' (key %, token %, %) in %.% cannot be deleted', \
        OLD.name, OLD.key, OLD.token, OLD.state, TG_TABLE_SCHEMA, TG_TABLE_NAME \
      USING ERRCODE = 'restrict_violation', \
        DETAIL = 'It keeps the lock''s fencing token and whether its last holder released it cleanly; without it the next holder would start at once, beside a command that may still run, with token 1 again.'; \
  END IF; \
  IF NEW.key IS DISTINCT FROM OLD.key OR NEW.token < OLD.token THEN \
    RAISE EXCEPTION 'onlyone: the row of lock ''%'' (key %, token %) in %.% cannot change its key or move its token back', \
        OLD.name, OLD.key, OLD.token, TG_TABLE_SCHEMA, TG_TABLE_NAME \
      USING ERRCODE = 'restrict_violation'; \
  END IF; \
  IF ((to_jsonb(NEW) - 'stopped_token') IS DISTINCT FROM (to_jsonb(OLD) - 'stopped_token') \
      OR NEW.stopped_token IS DISTINCT FROM OLD.stopped_token AND NEW.stopped_token IS DISTINCT FROM OLD.token) \
     AND NOT EXISTS (SELECT 1 FROM pg_locks \
       WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid::bigint = (OLD.key >> 32) & 4294967295 AND objid::bigint = OLD.key & 4294967295) THEN \
    RAISE EXCEPTION 'onlyone: the row of lock ''%'' (key %, token %, %) in %.% can only be changed by the session that holds its advisory lock', \
        OLD.name, OLD.key, OLD.token, OLD.state, TG_TABLE_SCHEMA, TG_TABLE_NAME \
      USING ERRCODE = 'restrict_violation', \
        DETAIL = 'Marking it released, or changing its bounds, would let the next holder start at once beside a command that may still run.'; \
  END IF; \
  RETURN NEW; \
END";

/// Columns every version of the table had.
const BASE_COLUMNS: [&str; 14] = [
    "key",
    "name",
    "token",
    "state",
    "backend_pid",
    "pid",
    "host",
    "start_time",
    "boot_id",
    "user_name",
    "uid",
    "command",
    "acquired_at",
    "updated_at",
];

/// The state table, by its validated, schema-qualified name.
#[derive(Clone, Debug)]
pub(super) struct Table {
    /// `"schema"."table"`, for statements.
    pub sql: String,
    /// `schema.table`, for messages.
    pub display: String,
    /// The schema, unquoted (a validated identifier).
    pub(super) schema: String,
    /// The table's own name, unquoted (a validated identifier).
    pub(super) name: String,
}

/// What the catalog says about an existing table.
#[derive(Debug)]
struct Shape {
    /// The columns of its primary key, sorted.
    primary_key: Vec<String>,
    /// The primary key constraint's name, quoted.
    primary_key_name: Option<String>,
    columns: Vec<String>,
    marked: bool,
    /// The function named as the guard's, in the table's schema.
    function: Option<OwnFunction>,
    /// Both guard triggers are there, as onlyone makes them, enabled for
    /// ordinary sessions (`tgenabled` 'O' or 'A': 'R' fires on replicas
    /// only, 'D' never), and call that function.
    triggers: bool,
    /// The function named as the table's fence, with its argument types
    /// (`text, bigint`), in the table's schema.
    fence: Option<OwnFunction>,
}

/// What the catalog says about a function named as one onlyone creates
/// beside the table (the guard, the fence). Anyone who may create in the
/// schema could have made it first; the guard runs with the rights of
/// every holder, the fence decides whether a stale holder may commit. So
/// a function of that name is used only if it is the one onlyone creates,
/// owned by someone the table's writers already trust.
#[derive(Debug)]
struct OwnFunction {
    /// How onlyone creates it.
    made: &'static Made,
    /// `schema.onlyone_state_guard()`, for messages.
    display: String,
    /// Its owner's name, quoted.
    owner: String,
    /// Its owner owns the table too.
    owned_by_table_owner: bool,
    owner_is_superuser: bool,
    /// Its body (`prosrc`) is the one onlyone creates it with.
    body_matches: bool,
    security_definer: bool,
    language: String,
    /// `pg_proc.proconfig`.
    config: Vec<String>,
    /// `pg_proc.prorettype`, as `regtype` prints it.
    returns: String,
    /// Other functions of the same name in the schema: a call that names
    /// it without exact argument types could resolve to one of them.
    overloads: Vec<String>,
}

impl OwnFunction {
    /// What makes it another function than onlyone's: empty when it is
    /// onlyone's.
    fn problems(&self, table: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.owned_by_table_owner && !self.owner_is_superuser {
            problems.push(format!(
                "its owner {} neither owns the table {table} nor is a superuser",
                self.owner
            ));
        }
        if !self.body_matches {
            problems.push(format!("its body is not the {}'s", self.made.role));
        }
        if self.language != "plpgsql" {
            problems.push(format!("its language is {}, not plpgsql", self.language));
        }
        match (self.security_definer, self.made.security_definer) {
            (true, false) => problems.push("it is SECURITY DEFINER".to_owned()),
            (false, true) => problems.push("it is not SECURITY DEFINER".to_owned()),
            _ => {}
        }
        if self.config != [FUNCTION_CONFIG] {
            problems.push(format!(
                "its settings are {:?}, not SET search_path = pg_catalog, pg_temp",
                self.config
            ));
        }
        if self.returns != self.made.returns {
            problems.push(format!(
                "it returns {}, not {}",
                self.returns, self.made.returns
            ));
        }
        if !self.overloads.is_empty() {
            problems.push(format!(
                "other functions share its name: {}",
                self.overloads.join(", ")
            ));
        }
        problems
    }
}

impl Shape {
    fn keyed_by_key(&self) -> bool {
        self.primary_key == ["key"]
    }

    fn missing_columns(&self) -> Vec<(&'static str, &'static str)> {
        ADDED_COLUMNS
            .into_iter()
            .filter(|(column, _)| !self.columns.iter().any(|c| c == column))
            .collect()
    }

    /// The guard function is onlyone's and both triggers call it.
    fn guarded(&self, table: &str) -> bool {
        self.triggers
            && self
                .function
                .as_ref()
                .is_some_and(|function| function.problems(table).is_empty())
    }

    /// The fence function is there and onlyone's.
    fn fenced(&self, table: &str) -> bool {
        self.fence
            .as_ref()
            .is_some_and(|function| function.problems(table).is_empty())
    }

    fn is_current(&self, table: &str) -> bool {
        self.keyed_by_key()
            && self.marked
            && self.guarded(table)
            && self.fenced(table)
            && self.missing_columns().is_empty()
    }

    /// What a migration changes, for messages.
    fn changes(&self, table: &str) -> Vec<String> {
        let mut changes = Vec::new();
        if !self.keyed_by_key() {
            changes.push("one row per advisory key".to_owned());
        }
        let missing: Vec<&str> = self
            .missing_columns()
            .iter()
            .map(|(column, _)| *column)
            .collect();
        if !missing.is_empty() {
            changes.push(format!("the columns {}", missing.join(", ")));
        }
        if !self.marked {
            changes.push(format!("its comment back to '{MARKER}'"));
        }
        if !self.guarded(table) {
            changes.push("its guard triggers back".to_owned());
        }
        if !self.fenced(table) {
            changes.push("the fence function".to_owned());
        }
        changes
    }

    /// The catalog shows the table's name but none of its columns: another
    /// session's `CREATE TABLE` committed between this query's snapshot
    /// and its lookup of the name.
    fn half_made(&self) -> bool {
        self.columns.is_empty()
    }
}

impl Table {
    /// Validates `name`: a lowercase identifier (`[a-z_][a-z0-9_]*`, at
    /// most 63 bytes), optionally qualified by a schema of the same form
    /// that is not a system schema (`pg_*`, `pg_temp` among them); without
    /// a schema, the table is in `public`.
    pub fn parse(name: &str) -> Result<Table> {
        let parts: Vec<&str> = name.split('.').collect();
        if parts.len() > 2 || !parts.iter().all(|part| is_identifier(part)) {
            return Err(Error::usage(format!(
                "invalid state table name {name:?}: it must be a lowercase identifier ([a-z_][a-z0-9_]*, at most {MAX_IDENTIFIER_LEN} bytes), optionally schema-qualified as schema.table"
            )));
        }
        let (schema, table) = match parts.as_slice() {
            [table] => (DEFAULT_SCHEMA, *table),
            [schema, table] => (*schema, *table),
            _ => unreachable!("one or two parts"),
        };
        // `pg_temp` is each session's own temporary schema: a holder's row
        // would end with its session, and the next holder would find none
        // (no lock-delay, token 1 again). The other `pg_*` schemas are the
        // system's.
        if schema.starts_with("pg_") {
            return Err(Error::usage(format!(
                "invalid state table name {name:?}: {schema} is a system schema (pg_temp is each session's own, and vanishes with it); name a schema of your own"
            )));
        }
        Ok(Table {
            sql: format!("\"{schema}\".\"{table}\""),
            display: format!("{schema}.{table}"),
            schema: schema.to_owned(),
            name: table.to_owned(),
        })
    }

    /// The statements that create the table, marked and guarded, and the
    /// fence function beside it.
    pub fn ddl(&self) -> String {
        let table = format!(
            "CREATE TABLE IF NOT EXISTS {} (\
             key bigint PRIMARY KEY, \
             name text NOT NULL, \
             token bigint NOT NULL CHECK (token > 0), \
             state text NOT NULL CHECK (state IN ('held', 'released')), \
             backend_pid integer, \
             pid integer, \
             host text, \
             start_time bigint, \
             boot_id text, \
             user_name text, \
             uid bigint, \
             command text[], \
             acquired_at timestamptz, \
             stop_within_ms bigint, \
             owed_ms bigint, \
             stopped_token bigint, \
             updated_at timestamptz NOT NULL DEFAULT now())",
            self.sql,
        );
        let mut statements = vec![table, self.mark()];
        statements.extend(self.guard());
        statements.push(self.fence_ddl());
        statements.join("; ")
    }

    fn mark(&self) -> String {
        format!("COMMENT ON TABLE {} IS '{MARKER}'", self.sql)
    }

    /// The statements that create the guard function unless it exists and
    /// (re)create its triggers (`EXECUTE PROCEDURE`, `DROP` then `CREATE`:
    /// known to every server version onlyone supports). The function is
    /// shared by the state tables of a schema, which other roles may own:
    /// it is never replaced (a new body would take a new name).
    fn guard(&self) -> Vec<String> {
        let function = format!("\"{}\".{GUARD_FUNCTION}", self.schema);
        let [rows, truncate] = GUARD_TRIGGERS;
        vec![
            format!(
                "DO $do$ BEGIN IF to_regprocedure('{function}()') IS NULL THEN \
                 CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql \
                 SET search_path = pg_catalog, pg_temp AS $onlyone$ {GUARD_BODY} $onlyone$; \
                 END IF; END $do$"
            ),
            format!("DROP TRIGGER IF EXISTS {rows} ON {}", self.sql),
            format!(
                "CREATE TRIGGER {rows} BEFORE UPDATE OR DELETE ON {} \
                 FOR EACH ROW EXECUTE PROCEDURE {function}()",
                self.sql
            ),
            format!("DROP TRIGGER IF EXISTS {truncate} ON {}", self.sql),
            format!(
                "CREATE TRIGGER {truncate} BEFORE TRUNCATE ON {} \
                 FOR EACH STATEMENT EXECUTE PROCEDURE {function}()",
                self.sql
            ),
        ]
    }

    /// The advisory key that sessions creating or migrating a state table
    /// of this schema take for their transaction (derived as a lock name's
    /// from `schema@tables`; `@` never appears in a lock name): one per
    /// schema, since the tables of a schema share the guard function.
    fn creation_key(&self) -> i64 {
        super::derive_key(&format!("{}@tables", self.schema))
    }

    /// Whether the table exists.
    pub fn exists(&self, session: &mut Session) -> Result<bool> {
        let row = session
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.sql])
            .map_err(|failure| session.error("looking for the state table", failure))?;
        Ok(row.get(0))
    }

    /// `"schema".onlyone_state_guard()`, for `to_regprocedure`.
    fn guard_function(&self) -> String {
        format!("\"{}\".{GUARD_FUNCTION}()", self.schema)
    }

    /// The table's shape, if it exists, and what the catalog says about
    /// the functions named as its guard's and its fence's: one query, so
    /// that the check every acquisition makes costs one statement.
    fn inspect(&self, session: &mut Session) -> Result<Option<Shape>> {
        let fence = format!("{}(text,bigint)", self.fence_function());
        let sql = format!(
            "SELECT \
               ARRAY(SELECT a.attname::text FROM pg_index i \
                     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = t.oid AND i.indisprimary ORDER BY 1), \
               (SELECT quote_ident(conname) FROM pg_constraint \
                WHERE conrelid = t.oid AND contype = 'p'), \
               ARRAY(SELECT attname::text FROM pg_attribute \
                     WHERE attrelid = t.oid AND attnum > 0 AND NOT attisdropped), \
               coalesce(obj_description(t.oid, 'pg_class') = $2, false), \
               (SELECT count(*) FROM pg_trigger g \
                WHERE g.tgrelid = t.oid AND NOT g.tgisinternal AND g.tgenabled IN ('O', 'A') \
                  AND g.tgfoid = f.oid AND g.tgqual IS NULL AND g.tgnargs = 0 \
                  AND g.tgattr::text = '' \
                  AND (g.tgname, g.tgtype) IN (($3, $4), ($5, $6))) = 2, \
               guard.*, fence.* \
             FROM (SELECT to_regclass($1)::oid AS oid) t \
             LEFT JOIN pg_proc f ON f.oid = to_regprocedure($7)::oid \
             LEFT JOIN LATERAL {guard} guard ON true \
             LEFT JOIN LATERAL {fence} fence ON true \
             WHERE t.oid IS NOT NULL",
            guard = function_facts("$7", "$8"),
            fence = function_facts("$9", "$10"),
        );
        let rows = session
            .query(
                &sql,
                &[
                    &self.sql,
                    &MARKER,
                    &GUARD_TRIGGERS[0],
                    &GUARD_TRIGGER_TYPES[0],
                    &GUARD_TRIGGERS[1],
                    &GUARD_TRIGGER_TYPES[1],
                    &self.guard_function(),
                    &guard_source(),
                    &fence,
                    &self.fence_source(),
                ],
            )
            .map_err(|failure| session.error("looking for the state table", failure))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(Shape {
            primary_key: row.get(0),
            primary_key_name: row.get(1),
            columns: row.get(2),
            marked: row.get(3),
            triggers: row.get(4),
            function: own_function(row, 5, &GUARD_MADE, &self.guard_function()),
            fence: own_function(row, 5 + FUNCTION_FACTS, &FENCE_MADE, &fence),
        }))
    }

    /// Creates the table unless it exists, and brings one of an older shape
    /// (or without its guard) to the current one. Sessions that create or
    /// migrate do it one at a time, each in a transaction that holds the
    /// table's creation key, and look again under it: a session that saw
    /// the table half made by a concurrent creator (the catalog can show
    /// its name before its columns) waits there for that creator, then
    /// finds it whole. A migration waits for the table until `deadline`
    /// at most (and [`MIGRATION_LOCK_WAIT`]).
    /// Whether the state table is current (its shape, marker, triggers and
    /// guard function checked as [`Table::ensure`] does first), without
    /// making or migrating it: one statement.
    pub fn is_current(&self, session: &mut Session) -> Result<bool> {
        Ok(self
            .inspect(session)?
            .is_some_and(|shape| shape.is_current(&self.display)))
    }

    pub fn ensure(&self, session: &mut Session, deadline: Option<Instant>) -> Result<()> {
        if self
            .inspect(session)?
            .is_some_and(|shape| shape.is_current(&self.display))
        {
            return Ok(());
        }
        for _ in 0..CREATE_ATTEMPTS {
            if self.ensure_in_transaction(session, deadline)? {
                return Ok(());
            }
            // Half made by a session that did not take the creation key
            // (an older onlyone, or by hand): look again shortly.
            std::thread::sleep(CREATE_PAUSE);
        }
        Err(Error::unavailable(format!(
            "PostgreSQL at {}: the state table {} could not be created (the catalog kept showing it half made, or other sessions kept creating and dropping it)",
            session.location(),
            self.display
        )))
    }

    /// One try at [`Table::ensure`] under the creation key: true when the
    /// table is current.
    fn ensure_in_transaction(
        &self,
        session: &mut Session,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let begun = session.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            self.creation_key()
        ));
        let result = match begun {
            // Known before a failure aborts the transaction, for the
            // statements a privileged role is asked to run.
            Ok(()) => {
                let role = current_role(session);
                self.ensure_locked(session, &role, deadline)
            }
            Err(failure) => Err(session.error("creating the state table", failure)),
        };
        let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
        match session.batch(end) {
            Ok(()) => result,
            Err(failure) => result.and(Err(session.error("creating the state table", failure))),
        }
    }

    fn ensure_locked(
        &self,
        session: &mut Session,
        role: &str,
        deadline: Option<Instant>,
    ) -> Result<bool> {
        let Some(shape) = self.inspect(session)? else {
            return match session.batch(&self.ddl()) {
                // The guard and fence functions may have been there
                // before (made by anyone who may create in the schema):
                // they are now used, so they must be onlyone's.
                Ok(()) => self.check_made(session),
                Err(failure) if is_creation_race(&failure) => Ok(false),
                Err(failure) if failure.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                    Err(self.cannot_create(session, failure, role))
                }
                Err(failure) => Err(session.error("creating the state table", failure)),
            };
        };
        if shape.is_current(&self.display) {
            return Ok(true);
        }
        if shape.half_made() {
            return Ok(false);
        }
        self.refuse_foreign(&shape)?;
        self.refuse_foreign_functions(&shape)?;
        self.migrate(session, &shape, role, deadline)?;
        self.check_made(session)
    }

    /// Looks at the table made or migrated in this transaction before it
    /// commits: a guard or fence function that another role created
    /// meanwhile (without the creation key) would otherwise be used.
    fn check_made(&self, session: &mut Session) -> Result<bool> {
        let Some(shape) = self.inspect(session)? else {
            return Ok(false);
        };
        self.refuse_foreign_functions(&shape)?;
        Ok(shape.is_current(&self.display))
    }

    /// A function named as the guard's or the fence's that is not
    /// onlyone's is refused, never replaced (only its owner could) nor
    /// used: the guard, a trigger function, would run with the rights of
    /// every holder; a fence that passes a stale token, or runs someone
    /// else's code with its owner's rights, defeats the fence.
    fn refuse_foreign_functions(&self, shape: &Shape) -> Result<()> {
        for (function, why, drop) in [
            (
                &shape.function,
                "as a trigger function it would run with the rights of every holder",
                format!(
                    "{} CASCADE, which drops the guard triggers too",
                    self.guard_function()
                ),
            ),
            (
                &shape.fence,
                "it decides whether a holder's transaction may commit",
                format!("{}(text,bigint)", self.fence_function()),
            ),
        ] {
            let Some(function) = function else {
                continue;
            };
            let problems = function.problems(&self.display);
            if problems.is_empty() {
                continue;
            }
            return Err(Error::unsafe_(format!(
                "the {} function {} of the state table {} is not the one onlyone creates ({}); {why}, so it is neither used nor replaced: find out who made it, drop it (DROP FUNCTION {drop}), and start again; or name a state table in a schema where only trusted roles may create",
                function.made.role,
                function.display,
                self.display,
                problems.join("; "),
            )));
        }
        Ok(())
    }

    /// A table of that name that is not an onlyone state table is left
    /// alone.
    fn refuse_foreign(&self, shape: &Shape) -> Result<()> {
        let missing: Vec<&str> = BASE_COLUMNS
            .into_iter()
            .filter(|column| !shape.columns.iter().any(|c| c == column))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::unsafe_(format!(
            "the table {} is not an onlyone state table (it has no column {}); name another table",
            self.display,
            missing.join(", ")
        )))
    }

    /// Brings a table of an older shape to the current one, in the
    /// transaction [`Table::ensure_in_transaction`] opened: one row per
    /// advisory key, the new columns, the marker, the guard. Two rows that
    /// claim one key cannot be merged safely: refused. The table is locked
    /// first, so that holders of an older onlyone (which do not take the
    /// creation key) wait too, but not long: see [`MIGRATION_LOCK_WAIT`].
    fn migrate(
        &self,
        session: &mut Session,
        shape: &Shape,
        role: &str,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let wait = deadline.map_or(MIGRATION_LOCK_WAIT, |deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .min(MIGRATION_LOCK_WAIT)
        });
        // lock_timeout = 0 would mean "wait forever".
        let millis = wait.as_millis().max(1);
        let lock = format!(
            "SAVEPOINT onlyone_migration_lock; SET LOCAL lock_timeout = '{millis}ms'; \
             LOCK TABLE {} IN ACCESS EXCLUSIVE MODE",
            self.sql
        );
        match session.batch(&lock) {
            Ok(()) => {}
            Err(failure) if failure.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                return Err(self.migration_blocked(
                    session,
                    shape,
                    Duration::from_millis(millis as u64),
                ));
            }
            Err(failure) => {
                return Err(self.migration_failed(session, failure, &self.migration(shape), role));
            }
        }
        let Some(shape) = self.inspect(session)? else {
            return Err(Error::unavailable(format!(
                "the state table {} was dropped while it was being migrated",
                self.display
            )));
        };
        if shape.is_current(&self.display) {
            return Ok(());
        }
        if !shape.keyed_by_key() {
            self.refuse_shared_keys(session)?;
        }
        let statements = self.migration(&shape);
        session
            .batch(&statements.join("; "))
            .map_err(|failure| self.migration_failed(session, failure, &statements, role))?;
        log::info!(
            "migrated the state table {} to the current shape (one row per advisory key, guarded)",
            self.display
        );
        Ok(())
    }

    /// The statements that bring a table of `shape` to the current shape.
    fn migration(&self, shape: &Shape) -> Vec<String> {
        let mut statements = Vec::new();
        let added: Vec<String> = shape
            .missing_columns()
            .iter()
            .map(|(column, kind)| format!("ADD COLUMN IF NOT EXISTS {column} {kind}"))
            .collect();
        if !added.is_empty() {
            statements.push(format!("ALTER TABLE {} {}", self.sql, added.join(", ")));
        }
        if !shape.keyed_by_key() {
            let drop = shape
                .primary_key_name
                .as_ref()
                .map(|constraint| format!("DROP CONSTRAINT {constraint}, "))
                .unwrap_or_default();
            statements.push(format!(
                "ALTER TABLE {} {drop}ADD PRIMARY KEY (key)",
                self.sql
            ));
        }
        if !shape.marked {
            statements.push(self.mark());
        }
        if !shape.guarded(&self.display) {
            statements.extend(self.guard());
        }
        if !shape.fenced(&self.display) {
            statements.push(self.fence_ddl());
        }
        statements
    }

    /// Refuses to key the rows by advisory key while two of them claim the
    /// same one.
    fn refuse_shared_keys(&self, session: &mut Session) -> Result<()> {
        let sql = format!(
            "SELECT key, string_agg(format('''%s'' (token %s, %s)', name, token, state), ', ' ORDER BY name) \
             FROM {} GROUP BY key HAVING count(*) > 1 ORDER BY key LIMIT 1",
            self.sql
        );
        let rows = session
            .query(&sql, &[])
            .map_err(|failure| session.error("reading the state table", failure))?;
        let Some(row) = rows.first() else {
            return Ok(());
        };
        let (key, names): (i64, String) = (row.get(0), row.get(1));
        Err(Error::unsafe_(format!(
            "the state table {} has more than one row for advisory key {key}: {names}. The state of a lock now belongs to its advisory key, and these rows cannot be merged safely: keep the row with the largest token (with state 'held' if any of them says 'held'), delete the others, then start again",
            self.display
        )))
    }

    /// The migration's lock was not granted within `wait`: names the
    /// sessions that hold the table (from `pg_locks` and
    /// `pg_stat_activity`), whose transactions it waited for.
    fn migration_blocked(&self, session: &mut Session, shape: &Shape, wait: Duration) -> Error {
        let holders = session
            .batch("ROLLBACK TO SAVEPOINT onlyone_migration_lock")
            .and_then(|()| {
                session.query(
                    "SELECT DISTINCT a.pid, a.application_name, a.usename::text, a.state \
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'relation' AND l.granted AND l.relation = to_regclass($1) \
                       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                       AND l.pid <> pg_backend_pid() \
                     ORDER BY a.pid",
                    &[&self.sql],
                )
            })
            .map(|rows| {
                rows.iter()
                    .map(|row| {
                        let pid: i32 = row.get(0);
                        let application: Option<String> = row.get(1);
                        let user: Option<String> = row.get(2);
                        let state: Option<String> = row.get(3);
                        let mut about = vec![match application.as_deref() {
                            None | Some("") => "no application_name".to_owned(),
                            Some(name) => format!("application_name '{name}'"),
                        }];
                        about.extend(user.map(|user| format!("user {user}")));
                        about.extend(state);
                        format!("pid {pid} ({})", about.join(", "))
                    })
                    .collect::<Vec<_>>()
            });
        let holders = match holders {
            Ok(holders) if holders.is_empty() => "sessions that have ended since".to_owned(),
            Ok(holders) => holders.join(", "),
            Err(failure) => format!("sessions that could not be listed ({})", failure.describe()),
        };
        Error::unavailable(format!(
            "the state table {} at {} needs a change ({}) that locks it (ACCESS EXCLUSIVE), and the lock was not granted within {}: the table is in use by {holders}; while a migration waits, every statement on the table waits behind it, so it gave up. End or commit that transaction, then start again",
            self.display,
            session.location(),
            shape.changes(&self.display).join(", "),
            humantime::format_duration(wait)
        ))
    }

    fn migration_failed(
        &self,
        session: &mut Session,
        failure: Failure,
        statements: &[String],
        role: &str,
    ) -> Error {
        if failure.code() != Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            return session.error("migrating the state table", failure);
        }
        let statements = statements.join("; ");
        let error = Error::unavailable(format!(
            "the state table {} at {} has the shape of an older onlyone (one row per lock name, or no guard against deleting its rows), and this role ({role}) may not change it ({}); have its owner run: {statements}",
            self.display,
            session.location(),
            failure.describe()
        ));
        failure.attach_to(error)
    }

    fn cannot_create(&self, session: &mut Session, failure: Failure, role: &str) -> Error {
        let error = Error::unavailable(format!(
            "cannot create the state table {} at {} ({}); have a privileged role run: {}; GRANT SELECT, INSERT, UPDATE ON {} TO {role}",
            self.display,
            session.location(),
            failure.describe(),
            self.ddl(),
            self.sql
        ));
        failure.attach_to(error)
    }

    /// The role lacks a privilege on the table.
    pub fn no_privilege(&self, session: &mut Session, failure: Failure) -> Error {
        let role = current_role(session);
        let error = Error::unavailable(format!(
            "no privilege on the state table {} at {} ({}); have its owner run: GRANT SELECT, INSERT, UPDATE ON {} TO {role}",
            self.display,
            session.location(),
            failure.describe(),
            self.sql
        ));
        failure.attach_to(error)
    }
}

/// What the catalog says about the function `signature` (for
/// `to_regprocedure`, the parameter `signature`), against what onlyone
/// creates with the body in the parameter `body`, and the table in `$1`:
/// [`FUNCTION_FACTS`] columns, NULL when there is no such function, read by
/// [`own_function`].
fn function_facts(signature: &str, body: &str) -> String {
    format!(
        "(SELECT \
           true, \
           quote_ident(r.rolname), \
           f.proowner = (SELECT relowner FROM pg_class WHERE oid = to_regclass($1)), \
           coalesce(r.rolsuper, false), \
           f.prosrc = {body}, \
           f.prosecdef, \
           l.lanname::text, \
           coalesce(f.proconfig, '{{}}'), \
           f.prorettype::regtype::text, \
           ARRAY(SELECT o.oid::regprocedure::text FROM pg_proc o \
                 WHERE o.proname = f.proname AND o.pronamespace = f.pronamespace \
                   AND o.oid <> f.oid ORDER BY 1) \
         FROM pg_proc f \
         LEFT JOIN pg_roles r ON r.oid = f.proowner \
         LEFT JOIN pg_language l ON l.oid = f.prolang \
         WHERE f.oid = to_regprocedure({signature})::oid)"
    )
}

/// How many columns [`function_facts`] gives.
const FUNCTION_FACTS: usize = 10;

/// The function whose [`function_facts`] start at column `at` of `row`, if
/// there is one.
fn own_function(
    row: &tokio_postgres::Row,
    at: usize,
    made: &'static Made,
    signature: &str,
) -> Option<OwnFunction> {
    let found: Option<bool> = row.get(at);
    found?;
    Some(OwnFunction {
        made,
        display: signature.replace('"', ""),
        owner: row.get::<_, Option<String>>(at + 1).unwrap_or_default(),
        owned_by_table_owner: row.get::<_, Option<bool>>(at + 2).unwrap_or(false),
        owner_is_superuser: row.get::<_, Option<bool>>(at + 3).unwrap_or(false),
        body_matches: row.get::<_, Option<bool>>(at + 4).unwrap_or(false),
        security_definer: row.get::<_, Option<bool>>(at + 5).unwrap_or(false),
        language: row.get::<_, Option<String>>(at + 6).unwrap_or_default(),
        config: row
            .get::<_, Option<Vec<String>>>(at + 7)
            .unwrap_or_default(),
        returns: row.get::<_, Option<String>>(at + 8).unwrap_or_default(),
        overloads: row
            .get::<_, Option<Vec<String>>>(at + 9)
            .unwrap_or_default(),
    })
}

/// The guard function's `prosrc`, as [`Table::guard`] creates it.
fn guard_source() -> String {
    format!(" {GUARD_BODY} ")
}

fn is_identifier(part: &str) -> bool {
    let mut bytes = part.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && part.len() <= MAX_IDENTIFIER_LEN
}

/// Another session created the table (or its row type or index) between
/// our look and our `CREATE TABLE IF NOT EXISTS`.
fn is_creation_race(failure: &Failure) -> bool {
    [
        SqlState::UNIQUE_VIOLATION,
        SqlState::DUPLICATE_TABLE,
        SqlState::DUPLICATE_OBJECT,
    ]
    .iter()
    .any(|code| failure.code() == Some(code))
}

/// The session's role, quoted for a GRANT statement.
fn current_role(session: &mut Session) -> String {
    session
        .query_one("SELECT quote_ident(current_user)", &[])
        .map(|row| row.get(0))
        .unwrap_or_else(|_| "<your role>".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_without_a_schema_is_in_public() {
        let table = Table::parse("onlyone_locks").unwrap();
        assert_eq!(table.sql, "\"public\".\"onlyone_locks\"");
        assert_eq!(table.display, "public.onlyone_locks");
        let table = Table::parse("ops.locks").unwrap();
        assert_eq!(table.sql, "\"ops\".\"locks\"");
        for bad in [
            "",
            "a.b.c",
            "Locks",
            "a-b",
            "a;b",
            "1a",
            &"n".repeat(64),
            "pg_temp.locks",
            "pg_catalog.locks",
        ] {
            assert!(Table::parse(bad).unwrap_err().is_usage(), "{bad:?}");
        }
    }

    fn onlyones_guard() -> OwnFunction {
        OwnFunction {
            made: &GUARD_MADE,
            display: "ops.onlyone_state_guard()".into(),
            owner: "bot".into(),
            owned_by_table_owner: true,
            owner_is_superuser: false,
            body_matches: true,
            security_definer: false,
            language: "plpgsql".into(),
            config: vec![FUNCTION_CONFIG.into()],
            returns: "trigger".into(),
            overloads: Vec::new(),
        }
    }

    fn onlyones_fence() -> OwnFunction {
        OwnFunction {
            made: &FENCE_MADE,
            display: "ops.locks_fence(text,bigint)".into(),
            security_definer: true,
            returns: "void".into(),
            ..onlyones_guard()
        }
    }

    #[test]
    fn a_guard_function_is_onlyones_only_as_onlyone_creates_it() {
        let table = "ops.locks";
        assert!(onlyones_guard().problems(table).is_empty());
        let superusers = OwnFunction {
            owned_by_table_owner: false,
            owner_is_superuser: true,
            ..onlyones_guard()
        };
        assert!(superusers.problems(table).is_empty());
        let planted = OwnFunction {
            owner: "planter".into(),
            owned_by_table_owner: false,
            body_matches: false,
            security_definer: true,
            language: "sql".into(),
            config: Vec::new(),
            ..onlyones_guard()
        };
        assert_eq!(
            planted.problems(table),
            [
                "its owner planter neither owns the table ops.locks nor is a superuser",
                "its body is not the guard's",
                "its language is sql, not plpgsql",
                "it is SECURITY DEFINER",
                "its settings are [], not SET search_path = pg_catalog, pg_temp",
            ]
        );
    }

    #[test]
    fn a_fence_function_is_onlyones_only_as_onlyone_creates_it() {
        let table = "ops.locks";
        assert!(onlyones_fence().problems(table).is_empty());
        // What an attacker plants: `SELECT` that always passes, as the
        // planter, with its own rights.
        let planted = OwnFunction {
            owner: "planter".into(),
            owned_by_table_owner: false,
            body_matches: false,
            security_definer: false,
            language: "sql".into(),
            config: Vec::new(),
            returns: "boolean".into(),
            overloads: vec!["ops.locks_fence(text,integer)".into()],
            ..onlyones_fence()
        };
        assert_eq!(
            planted.problems(table),
            [
                "its owner planter neither owns the table ops.locks nor is a superuser",
                "its body is not the fence's",
                "its language is sql, not plpgsql",
                "it is not SECURITY DEFINER",
                "its settings are [], not SET search_path = pg_catalog, pg_temp",
                "it returns boolean, not void",
                "other functions share its name: ops.locks_fence(text,integer)",
            ]
        );
    }

    #[test]
    fn an_old_table_is_migrated_in_three_statements() {
        let table = Table::parse("onlyone_locks").unwrap();
        let old = Shape {
            primary_key: vec!["name".into()],
            primary_key_name: Some("onlyone_locks_pkey".into()),
            columns: BASE_COLUMNS.iter().map(|c| c.to_string()).collect(),
            marked: false,
            function: Some(onlyones_guard()),
            triggers: true,
            fence: Some(onlyones_fence()),
        };
        assert!(!old.is_current(&table.display));
        assert_eq!(
            table.migration(&old),
            [
                "ALTER TABLE \"public\".\"onlyone_locks\" ADD COLUMN IF NOT EXISTS stop_within_ms bigint, ADD COLUMN IF NOT EXISTS owed_ms bigint, ADD COLUMN IF NOT EXISTS stopped_token bigint",
                "ALTER TABLE \"public\".\"onlyone_locks\" DROP CONSTRAINT onlyone_locks_pkey, ADD PRIMARY KEY (key)",
                "COMMENT ON TABLE \"public\".\"onlyone_locks\" IS 'onlyone state table'",
            ]
        );
    }

    #[test]
    fn a_table_without_its_guard_gets_it() {
        let table = Table::parse("ops.locks").unwrap();
        let unguarded = Shape {
            primary_key: vec!["key".into()],
            primary_key_name: Some("locks_pkey".into()),
            columns: BASE_COLUMNS
                .iter()
                .map(|c| c.to_string())
                .chain(ADDED_COLUMNS.iter().map(|(c, _)| c.to_string()))
                .collect(),
            marked: true,
            function: Some(onlyones_guard()),
            triggers: false,
            fence: Some(onlyones_fence()),
        };
        assert!(!unguarded.is_current(&table.display));
        let statements = table.migration(&unguarded);
        assert_eq!(statements, table.guard());
        assert!(
            statements[0].starts_with(
                "DO $do$ BEGIN IF to_regprocedure('\"ops\".onlyone_state_guard()') IS NULL THEN CREATE FUNCTION \"ops\".onlyone_state_guard() RETURNS trigger"
            ),
            "{}",
            statements[0]
        );
        assert!(statements.iter().all(|s| !s.contains('\n')));
        // The printed DDL guards a new table too.
        let ddl = table.ddl();
        assert!(
            ddl.contains("BEFORE TRUNCATE ON \"ops\".\"locks\""),
            "{ddl}"
        );
    }
}
