//! The control plane's durable state: one SQLite file in the data directory holding users and
//! token hashes, Flows and Deployments (spec, phase, what the user asked for, gateway ports),
//! secrets and jobs. Every write is committed before the API answers, so nothing acknowledged
//! is lost when the server is killed. The schema is versioned: migrations live in
//! [`MIGRATIONS`] and are applied in order at open, recorded in `schema_version`.
//!
//! Secret values are sealed with the server's key ([`super::sealing`]) before they reach SQLite,
//! and deleted content is overwritten (`secure_delete`), so neither the file nor its WAL holds a
//! value in plain text. This module never logs a secret's data.

use super::names;
use super::sealing::{KeyError, OpenError, SecretKey};
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the state database {path}: {message}")]
    Sql { path: String, message: String },
    #[error(
        "the state database {path} has schema version {found}, newer than this jc knows ({known}); use a newer jc"
    )]
    TooNew {
        path: String,
        found: usize,
        known: usize,
    },
    #[error(
        "secret {name} of Flow {flow_id} cannot be decrypted: {reason}. Start the server with the \
         key that sealed it ({key_env}, else the file {key_file} in the data folder; restore it \
         from your backup), or delete the secret and create it again",
        key_env = super::sealing::KEY_ENV,
        key_file = super::sealing::KEY_FILE
    )]
    Unsealable {
        flow_id: String,
        name: String,
        reason: OpenError,
    },
    #[error("secret {name} of Flow {flow_id} cannot be sealed: {source}")]
    Seal {
        flow_id: String,
        name: String,
        #[source]
        source: KeyError,
    },
}

/// One schema step. Most are SQL; a step that must transform values (sealing secrets) is code,
/// run in the same transaction as the version it records.
pub enum Migration {
    Sql(&'static str),
    Code(fn(&rusqlite::Transaction<'_>, &SecretKey) -> std::result::Result<(), MigrationError>),
}

/// Why a code migration stopped (its transaction is rolled back).
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Schema migrations, applied in order; the version is the number applied. Append only: an
/// existing database runs only the ones it has not seen.
pub const MIGRATIONS: &[Migration] = &[
    // 1: users, tokens, flows (and deployments), secrets, jobs.
    Migration::Sql("CREATE TABLE users (name TEXT PRIMARY KEY, ctime TEXT NOT NULL);
     CREATE TABLE tokens (hash TEXT PRIMARY KEY, user TEXT NOT NULL REFERENCES users(name), ctime TEXT NOT NULL);
     CREATE TABLE flows (
        id TEXT PRIMARY KEY, user TEXT NOT NULL, kind TEXT NOT NULL, name TEXT,
        spec TEXT NOT NULL, phase TEXT NOT NULL, desired TEXT NOT NULL, error TEXT,
        ports TEXT NOT NULL, labels TEXT NOT NULL, ctime TEXT NOT NULL, utime TEXT NOT NULL);
     CREATE INDEX flows_user ON flows(user, kind);
     CREATE TABLE secrets (
        flow_id TEXT NOT NULL, name TEXT NOT NULL, user TEXT NOT NULL, data TEXT NOT NULL,
        ctime TEXT NOT NULL, utime TEXT NOT NULL, PRIMARY KEY (flow_id, name));
     CREATE TABLE jobs (
        flow_id TEXT NOT NULL, name TEXT NOT NULL, user TEXT NOT NULL, spec TEXT NOT NULL,
        status TEXT NOT NULL, logs TEXT NOT NULL DEFAULT '', PRIMARY KEY (flow_id, name));"),
    // 2: pushed Executors (name, tag) per user, for `POST /executors`.
    Migration::Sql(
        "CREATE TABLE executors (
        user TEXT NOT NULL, name TEXT NOT NULL, tag TEXT NOT NULL, ctime TEXT NOT NULL,
        PRIMARY KEY (user, name, tag));",
    ),
    // 3: secret values sealed; the plain-text column is gone with the table that held it.
    Migration::Code(seal_plain_secrets),
];

/// Copies every secret into a table that holds only sealed values, then drops the plain one
/// (whose pages `secure_delete` zeroes).
fn seal_plain_secrets(
    tx: &rusqlite::Transaction<'_>,
    key: &SecretKey,
) -> std::result::Result<(), MigrationError> {
    tx.execute_batch(
        "CREATE TABLE secrets_sealed (
            flow_id TEXT NOT NULL, name TEXT NOT NULL, user TEXT NOT NULL, sealed BLOB NOT NULL,
            ctime TEXT NOT NULL, utime TEXT NOT NULL, PRIMARY KEY (flow_id, name));",
    )?;
    {
        let mut read = tx.prepare("SELECT flow_id, name, user, data, ctime, utime FROM secrets")?;
        let mut write = tx.prepare(
            "INSERT INTO secrets_sealed (flow_id, name, user, sealed, ctime, utime)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let (flow_id, name): (String, String) = (r.get(0)?, r.get(1)?);
            let data: String = r.get(3)?;
            let sealed = seal(key, &flow_id, &name, data.as_bytes())?;
            write.execute(params![
                flow_id,
                name,
                r.get::<_, String>(2)?,
                sealed,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?
            ])?;
        }
    }
    tx.execute_batch("DROP TABLE secrets; ALTER TABLE secrets_sealed RENAME TO secrets;")?;
    Ok(())
}

/// What a sealed value is bound to: its secret's Flow and name, so that it opens nowhere else.
fn secret_context(flow_id: &str, name: &str) -> Vec<u8> {
    [flow_id.as_bytes(), b"\0", name.as_bytes()].concat()
}

fn seal(key: &SecretKey, flow_id: &str, name: &str, plain: &[u8]) -> Result<Vec<u8>> {
    key.seal(&secret_context(flow_id, name), plain)
        .map_err(|source| StoreError::Seal {
            flow_id: flow_id.to_string(),
            name: name.to_string(),
            source,
        })
}

/// The data of a sealed secret row. A value that opens but is not a JSON object of strings can
/// only come from a sealing bug: it is an error too, never an empty secret.
fn unseal(
    key: &SecretKey,
    flow_id: &str,
    name: &str,
    sealed: &[u8],
) -> Result<BTreeMap<String, String>> {
    let unsealable = |reason| StoreError::Unsealable {
        flow_id: flow_id.to_string(),
        name: name.to_string(),
        reason,
    };
    let plain = key
        .open(&secret_context(flow_id, name), sealed)
        .map_err(unsealable)?;
    serde_json::from_slice(&plain).map_err(|_| unsealable(OpenError::Mismatch))
}

/// The phases the public client knows (any other string crashes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Pending,
    Starting,
    Serving,
    Failed,
    Updating,
    Deleted,
    Paused,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Starting,
        Phase::Serving,
        Phase::Failed,
        Phase::Updating,
        Phase::Deleted,
        Phase::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Starting => "Starting",
            Phase::Serving => "Serving",
            Phase::Failed => "Failed",
            Phase::Updating => "Updating",
            Phase::Deleted => "Deleted",
            Phase::Paused => "Paused",
        }
    }

    /// Case-insensitive, as the client title-cases what users type.
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// What the user last asked for a Flow: the server restores this after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Desired {
    Running,
    Paused,
    Deleted,
}

impl Desired {
    fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Paused => "paused",
            Desired::Deleted => "deleted",
        }
    }
    fn parse(s: &str) -> Desired {
        match s {
            "paused" => Desired::Paused,
            "deleted" => Desired::Deleted,
            _ => Desired::Running,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Flow,
    Deployment,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Flow => "flow",
            Kind::Deployment => "deployment",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FlowRecord {
    pub id: String,
    pub user: String,
    pub kind: Kind,
    pub name: Option<String>,
    /// The YAML as submitted (or as rewritten by `:scale`).
    pub spec: String,
    pub phase: Phase,
    pub desired: Desired,
    pub error: Option<String>,
    /// The gateway's ports, one per listener, chosen at first deploy and kept for good.
    pub ports: Vec<u16>,
    pub labels: BTreeMap<String, String>,
    pub ctime: String,
    pub utime: String,
}

#[derive(Clone, PartialEq)]
pub struct SecretRecord {
    pub flow_id: String,
    pub name: String,
    pub data: BTreeMap<String, String>,
    pub ctime: String,
    pub utime: String,
}

/// Shows the keys a secret holds, never the values: a record that reaches a log leaks nothing.
impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("flow_id", &self.flow_id)
            .field("name", &self.name)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("ctime", &self.ctime)
            .field("utime", &self.utime)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub flow_id: String,
    pub name: String,
    /// The request as sent (JSON).
    pub spec: serde_json::Value,
    /// The status object the API returns (JSON).
    pub status: serde_json::Value,
    pub logs: String,
}

pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
    key: SecretKey,
}

type Result<T> = std::result::Result<T, StoreError>;

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date, sealing any
    /// plain-text secret a database from before sealing holds. Every stored secret must open
    /// with `key`: a wrong key is refused here, naming a secret it cannot open, rather than
    /// found out by the first Flow that needs one.
    pub fn open(path: &Path, key: &SecretKey) -> Result<Store> {
        let err = |e: rusqlite::Error| StoreError::Sql {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Sql {
                path: path.display().to_string(),
                message: format!("cannot create {}: {e}", dir.display()),
            })?;
        }
        let conn = Connection::open(path).map_err(err)?;
        // WAL lets `jc server token create` write while the server runs; FULL sync makes a
        // commit survive power loss, not only a killed process; secure_delete zeroes what is
        // deleted or replaced, so no old secret lingers in free pages.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; \
             PRAGMA secure_delete=ON;",
        )
        .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        let store = Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            key: key.clone(),
        };
        store.migrate()?;
        store.check_secrets_open()?;
        Ok(store)
    }

    /// Opens every stored secret once (there are few), so a wrong key stops the start.
    fn check_secrets_open(&self) -> Result<()> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT flow_id, name, sealed FROM secrets ORDER BY flow_id, name")
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let (flow_id, name, sealed): (String, String, Vec<u8>) = (
                r.get(0).map_err(|e| self.err(e))?,
                r.get(1).map_err(|e| self.err(e))?,
                r.get(2).map_err(|e| self.err(e))?,
            );
            unseal(&self.key, &flow_id, &name, &sealed)?;
        }
        Ok(())
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .map_err(|e| self.err(e))?;
        let current: Option<i64> = tx
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let current = current.unwrap_or(0) as usize;
        if current > MIGRATIONS.len() {
            return Err(StoreError::TooNew {
                path: self.path.display().to_string(),
                found: current,
                known: MIGRATIONS.len(),
            });
        }
        let mut sealed_now = false;
        for (i, m) in MIGRATIONS.iter().enumerate().skip(current) {
            match m {
                Migration::Sql(sql) => tx.execute_batch(sql).map_err(|e| self.err(e))?,
                Migration::Code(step) => {
                    step(&tx, &self.key).map_err(|e| match e {
                        MigrationError::Sql(e) => self.err(e),
                        MigrationError::Store(e) => e,
                    })?;
                    sealed_now = true;
                }
            }
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                params![i as i64 + 1],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        if sealed_now {
            // The WAL still holds the pages as they were before the commit (plain values among
            // them) until a checkpoint copies the new ones into the file and empties it.
            let busy: i64 = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            if busy != 0 {
                tracing::warn!(
                    path = %self.path.display(),
                    "another process holds the state database open: its write-ahead log is \
                     emptied when that process closes it"
                );
            }
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<usize> {
        let v: Option<i64> = self
            .conn
            .lock()
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(v.unwrap_or(0) as usize)
    }

    // ---- users and tokens

    /// Creates `user` if missing and returns a new token for it (only its hash is stored).
    pub fn create_token(&self, user: &str) -> Result<String> {
        let token = names::new_token();
        let now = names::now_iso();
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT OR IGNORE INTO users (name, ctime) VALUES (?1, ?2)",
            params![user, now],
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO tokens (hash, user, ctime) VALUES (?1, ?2, ?3)",
            params![names::token_hash(&token), user, now],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(token)
    }

    pub fn user_for_token(&self, token: &str) -> Result<Option<String>> {
        self.conn
            .lock()
            .query_row(
                "SELECT user FROM tokens WHERE hash = ?1",
                params![names::token_hash(token)],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    // ---- flows and deployments

    pub fn insert_flow(&self, f: &FlowRecord) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO flows (id, user, kind, name, spec, phase, desired, error, ports, labels, ctime, utime)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    f.id,
                    f.user,
                    f.kind.as_str(),
                    f.name,
                    f.spec,
                    f.phase.as_str(),
                    f.desired.as_str(),
                    f.error,
                    serde_json::to_string(&f.ports).unwrap_or_default(),
                    serde_json::to_string(&f.labels).unwrap_or_default(),
                    f.ctime,
                    f.utime
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn row_to_flow(r: &rusqlite::Row<'_>) -> rusqlite::Result<FlowRecord> {
        let kind: String = r.get(2)?;
        let phase: String = r.get(5)?;
        let desired: String = r.get(6)?;
        let ports: String = r.get(8)?;
        let labels: String = r.get(9)?;
        Ok(FlowRecord {
            id: r.get(0)?,
            user: r.get(1)?,
            kind: if kind == "deployment" {
                Kind::Deployment
            } else {
                Kind::Flow
            },
            name: r.get(3)?,
            spec: r.get(4)?,
            phase: Phase::parse(&phase).unwrap_or(Phase::Pending),
            desired: Desired::parse(&desired),
            error: r.get(7)?,
            ports: serde_json::from_str(&ports).unwrap_or_default(),
            labels: serde_json::from_str(&labels).unwrap_or_default(),
            ctime: r.get(10)?,
            utime: r.get(11)?,
        })
    }

    const FLOW_COLS: &str =
        "id, user, kind, name, spec, phase, desired, error, ports, labels, ctime, utime";

    /// One Flow of `user` (None for another user's: they must not learn it exists).
    pub fn get_flow(&self, user: &str, kind: Kind, id: &str) -> Result<Option<FlowRecord>> {
        self.conn
            .lock()
            .query_row(
                &format!(
                    "SELECT {} FROM flows WHERE id = ?1 AND user = ?2 AND kind = ?3",
                    Self::FLOW_COLS
                ),
                params![id, user, kind.as_str()],
                Self::row_to_flow,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn flow_by_id(&self, id: &str) -> Result<Option<FlowRecord>> {
        self.conn
            .lock()
            .query_row(
                &format!("SELECT {} FROM flows WHERE id = ?1", Self::FLOW_COLS),
                params![id],
                Self::row_to_flow,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every Flow of `user` of `kind`, oldest first; None lists every user's (at start-up).
    pub fn list_flows(&self, user: Option<&str>, kind: Option<Kind>) -> Result<Vec<FlowRecord>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {} FROM flows WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR kind = ?2) ORDER BY ctime, id",
                Self::FLOW_COLS
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![user, kind.map(Kind::as_str)], Self::row_to_flow)
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    pub fn set_phase(&self, id: &str, phase: Phase, error: Option<&str>) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "UPDATE flows SET phase = ?2, error = ?3, utime = ?4 WHERE id = ?1",
                params![id, phase.as_str(), error, names::now_iso()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Records what the user asked for and the phase that shows it, in one write.
    pub fn set_desired(&self, id: &str, desired: Desired, phase: Phase) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "UPDATE flows SET desired = ?2, phase = ?3, error = NULL, utime = ?4 WHERE id = ?1",
                params![id, desired.as_str(), phase.as_str(), names::now_iso()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn set_spec(
        &self,
        id: &str,
        spec: &str,
        name: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "UPDATE flows SET spec = ?2, name = ?3, labels = ?4, utime = ?5 WHERE id = ?1",
                params![
                    id,
                    spec,
                    name,
                    serde_json::to_string(labels).unwrap_or_default(),
                    names::now_iso()
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn set_ports(&self, id: &str, ports: &[u16]) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "UPDATE flows SET ports = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(ports).unwrap_or_default()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Removes what belongs to a deleted Flow (its secrets and jobs); the Flow's own row stays
    /// as a `Deleted` tombstone so that clients polling it see the phase.
    pub fn purge_flow_children(&self, id: &str) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM secrets WHERE flow_id = ?1", params![id])
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM jobs WHERE flow_id = ?1", params![id])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    // ---- secrets

    /// Creates or replaces a secret; returns true if it existed.
    pub fn put_secret(
        &self,
        user: &str,
        flow_id: &str,
        name: &str,
        data: &BTreeMap<String, String>,
    ) -> Result<bool> {
        let now = names::now_iso();
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let existed = tx
            .query_row(
                "SELECT 1 FROM secrets WHERE flow_id = ?1 AND name = ?2",
                params![flow_id, name],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .is_some();
        let plain = serde_json::to_vec(data).unwrap_or_default();
        let sealed = seal(&self.key, flow_id, name, &plain)?;
        tx.execute(
            "INSERT INTO secrets (flow_id, name, user, sealed, ctime, utime) VALUES (?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (flow_id, name) DO UPDATE SET sealed = excluded.sealed, utime = excluded.utime",
            params![flow_id, name, user, sealed, now],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(existed)
    }

    /// A row as stored: the data still sealed.
    fn row_to_sealed(r: &rusqlite::Row<'_>) -> rusqlite::Result<(SecretRecord, Vec<u8>)> {
        Ok((
            SecretRecord {
                flow_id: r.get(0)?,
                name: r.get(1)?,
                data: BTreeMap::new(),
                ctime: r.get(3)?,
                utime: r.get(4)?,
            },
            r.get(2)?,
        ))
    }

    fn unseal_record(&self, (mut rec, sealed): (SecretRecord, Vec<u8>)) -> Result<SecretRecord> {
        rec.data = unseal(&self.key, &rec.flow_id, &rec.name, &sealed)?;
        Ok(rec)
    }

    pub fn get_secret(&self, flow_id: &str, name: &str) -> Result<Option<SecretRecord>> {
        let row = self
            .conn
            .lock()
            .query_row(
                "SELECT flow_id, name, sealed, ctime, utime FROM secrets WHERE flow_id = ?1 AND name = ?2",
                params![flow_id, name],
                Self::row_to_sealed,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|r| self.unseal_record(r)).transpose()
    }

    pub fn list_secrets(&self, flow_id: &str) -> Result<Vec<SecretRecord>> {
        let rows = {
            let conn = self.conn.lock();
            let mut stmt = conn
                .prepare("SELECT flow_id, name, sealed, ctime, utime FROM secrets WHERE flow_id = ?1 ORDER BY name")
                .map_err(|e| self.err(e))?;
            stmt.query_map(params![flow_id], Self::row_to_sealed)
                .map_err(|e| self.err(e))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| self.err(e))?
        };
        rows.into_iter().map(|r| self.unseal_record(r)).collect()
    }

    pub fn delete_secret(&self, flow_id: &str, name: &str) -> Result<bool> {
        self.conn
            .lock()
            .execute(
                "DELETE FROM secrets WHERE flow_id = ?1 AND name = ?2",
                params![flow_id, name],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    // ---- jobs

    /// Inserts a job; false if one with that name exists for the Flow.
    pub fn insert_job(&self, user: &str, j: &JobRecord) -> Result<bool> {
        self.conn
            .lock()
            .execute(
                "INSERT OR IGNORE INTO jobs (flow_id, name, user, spec, status, logs) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![j.flow_id, j.name, user, j.spec.to_string(), j.status.to_string(), j.logs],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    pub fn update_job(
        &self,
        flow_id: &str,
        name: &str,
        status: &serde_json::Value,
        logs: &str,
    ) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "UPDATE jobs SET status = ?3, logs = ?4 WHERE flow_id = ?1 AND name = ?2",
                params![flow_id, name, status.to_string(), logs],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn row_to_job(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
        let spec: String = r.get(2)?;
        let status: String = r.get(3)?;
        Ok(JobRecord {
            flow_id: r.get(0)?,
            name: r.get(1)?,
            spec: serde_json::from_str(&spec).unwrap_or_default(),
            status: serde_json::from_str(&status).unwrap_or_default(),
            logs: r.get(4)?,
        })
    }

    pub fn get_job(&self, flow_id: &str, name: &str) -> Result<Option<JobRecord>> {
        self.conn
            .lock()
            .query_row(
                "SELECT flow_id, name, spec, status, logs FROM jobs WHERE flow_id = ?1 AND name = ?2",
                params![flow_id, name],
                Self::row_to_job,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Jobs of one Flow, or with None of every Flow (at start-up).
    pub fn list_jobs(&self, flow_id: Option<&str>) -> Result<Vec<JobRecord>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare("SELECT flow_id, name, spec, status, logs FROM jobs WHERE (?1 IS NULL OR flow_id = ?1) ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![flow_id], Self::row_to_job)
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    pub fn delete_job(&self, flow_id: &str, name: &str) -> Result<bool> {
        self.conn
            .lock()
            .execute(
                "DELETE FROM jobs WHERE flow_id = ?1 AND name = ?2",
                params![flow_id, name],
            )
            .map(|n| n > 0)
            .map_err(|e| self.err(e))
    }

    // ---- pushed Executors

    pub fn record_executor(&self, user: &str, name: &str, tag: &str) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT OR REPLACE INTO executors (user, name, tag, ctime) VALUES (?1, ?2, ?3, ?4)",
                params![user, name, tag, names::now_iso()],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "zeroflow-store-{name}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("state.db")
    }

    fn key() -> SecretKey {
        SecretKey::from_bytes([42; 32])
    }

    fn sql(i: usize) -> &'static str {
        match &MIGRATIONS[i] {
            Migration::Sql(s) => s,
            Migration::Code(_) => panic!("migration {} is code", i + 1),
        }
    }

    fn flow(id: &str, user: &str) -> FlowRecord {
        FlowRecord {
            id: id.into(),
            user: user.into(),
            kind: Kind::Flow,
            name: Some("f".into()),
            spec: "jtype: Flow\n".into(),
            phase: Phase::Pending,
            desired: Desired::Running,
            error: None,
            ports: vec![41000, 41001],
            labels: BTreeMap::from([("team".into(), "a".into())]),
            ctime: names::now_iso(),
            utime: names::now_iso(),
        }
    }

    #[test]
    fn migrations_apply_once_in_order() {
        let p = tmp("migrate");
        let s = Store::open(&p, &key()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        drop(s);
        // Reopening applies nothing twice (a second CREATE TABLE would fail).
        let s = Store::open(&p, &key()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        let rows: i64 = s
            .conn
            .lock()
            .query_row("SELECT count(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows as usize, MIGRATIONS.len());
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let p = tmp("newer");
        let s = Store::open(&p, &key()).unwrap();
        s.conn
            .lock()
            .execute("INSERT INTO schema_version (version) VALUES (999)", [])
            .unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&p, &key()),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn a_partial_migration_rolls_back() {
        // Version 1 applied by hand, then a broken table in the way of migration 2: opening
        // fails, and the version stays 1 (the transaction did not half-apply).
        let p = tmp("partial");
        {
            let conn = Connection::open(&p).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);",
            )
            .unwrap();
            conn.execute_batch(sql(0)).unwrap();
            conn.execute_batch("CREATE TABLE executors (x INTEGER)")
                .unwrap();
        }
        assert!(Store::open(&p, &key()).is_err());
        let conn = Connection::open(&p).unwrap();
        let v: i64 = conn
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
    }

    #[test]
    fn state_survives_reopening() {
        let p = tmp("durable");
        {
            let s = Store::open(&p, &key()).unwrap();
            let token = s.create_token("alice").unwrap();
            std::fs::write(p.with_extension("token"), &token).unwrap();
            s.insert_flow(&flow("a-b-0123456789", "alice")).unwrap();
            s.set_desired("a-b-0123456789", Desired::Paused, Phase::Paused)
                .unwrap();
            s.put_secret(
                "alice",
                "a-b-0123456789",
                "db",
                &BTreeMap::from([("PASSWORD".into(), "x".into())]),
            )
            .unwrap();
            // Dropped without any explicit flush: every write was committed when it returned.
        }
        let s = Store::open(&p, &key()).unwrap();
        let token = std::fs::read_to_string(p.with_extension("token")).unwrap();
        assert_eq!(s.user_for_token(&token).unwrap().as_deref(), Some("alice"));
        assert_eq!(s.user_for_token("zf_wrong").unwrap(), None);
        let f = s
            .get_flow("alice", Kind::Flow, "a-b-0123456789")
            .unwrap()
            .unwrap();
        assert_eq!(f.phase, Phase::Paused);
        assert_eq!(f.desired, Desired::Paused);
        assert_eq!(f.ports, vec![41000, 41001]);
        assert_eq!(f.labels["team"], "a");
        assert_eq!(
            s.get_secret("a-b-0123456789", "db").unwrap().unwrap().data["PASSWORD"],
            "x"
        );
    }

    #[test]
    fn another_user_does_not_see_a_flow() {
        let s = Store::open(&tmp("users"), &key()).unwrap();
        s.insert_flow(&flow("x-y-0123456789", "alice")).unwrap();
        assert!(
            s.get_flow("bob", Kind::Flow, "x-y-0123456789")
                .unwrap()
                .is_none()
        );
        assert!(
            s.list_flows(Some("bob"), Some(Kind::Flow))
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.list_flows(Some("alice"), None).unwrap().len(), 1);
        assert!(
            s.get_flow("alice", Kind::Deployment, "x-y-0123456789")
                .unwrap()
                .is_none()
        );
    }

    /// Every byte SQLite keeps on disk for the database: the file, its WAL and shared memory.
    fn disk_bytes(p: &Path) -> Vec<u8> {
        ["", "-wal", "-shm"]
            .iter()
            .flat_map(|suffix| {
                let mut f = p.as_os_str().to_owned();
                f.push(suffix);
                std::fs::read(PathBuf::from(f)).unwrap_or_default()
            })
            .collect()
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    const NEEDLE: &str = "pa55-Needle-7f3a9c";

    fn data(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("PASSWORD".into(), v.into())])
    }

    #[test]
    fn secret_values_are_sealed_on_disk_and_round_trip() {
        let p = tmp("sealed");
        let s = Store::open(&p, &key()).unwrap();
        s.put_secret("alice", "f-1", "db", &data(NEEDLE)).unwrap();
        s.put_secret("alice", "f-1", "other", &data("x")).unwrap();
        assert_eq!(
            s.get_secret("f-1", "db").unwrap().unwrap().data,
            data(NEEDLE)
        );
        // While the server runs (the write is in the WAL) and after it closes.
        assert!(!contains(&disk_bytes(&p), NEEDLE));
        // Replaced and deleted values leave nothing readable either.
        s.put_secret("alice", "f-1", "db", &data("second")).unwrap();
        assert_eq!(s.list_secrets("f-1").unwrap().len(), 2);
        assert!(s.delete_secret("f-1", "other").unwrap());
        drop(s);
        let bytes = disk_bytes(&p);
        assert!(!contains(&bytes, NEEDLE) && !contains(&bytes, "second"));
        assert!(!contains(&bytes, "PASSWORD"), "key names are sealed too");
        let s = Store::open(&p, &key()).unwrap();
        let got = s.get_secret("f-1", "db").unwrap().unwrap();
        assert_eq!(got.data, data("second"));
        // A record in a log shows its keys only.
        let shown = format!("{got:?}");
        assert!(
            shown.contains("PASSWORD") && !shown.contains("second"),
            "{shown}"
        );
    }

    #[test]
    fn plain_text_secrets_of_an_older_store_are_sealed_at_open() {
        // A data folder from before sealing: schema 2, values as JSON text.
        let p = tmp("plain");
        {
            let conn = Connection::open(&p).unwrap();
            conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1), (2);",
            )
            .unwrap();
            conn.execute_batch(sql(0)).unwrap();
            conn.execute_batch(sql(1)).unwrap();
            for (flow, name) in [("f-1", "db"), ("f-2", "api")] {
                conn.execute(
                    "INSERT INTO secrets (flow_id, name, user, data, ctime, utime) VALUES (?1, ?2, 'alice', ?3, 't0', 't1')",
                    params![flow, name, serde_json::to_string(&data(NEEDLE)).unwrap()],
                )
                .unwrap();
            }
        }
        assert!(
            contains(&disk_bytes(&p), NEEDLE),
            "the old store holds it in plain text"
        );
        let s = Store::open(&p, &key()).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        let got = s.get_secret("f-2", "api").unwrap().unwrap();
        assert_eq!(got.data, data(NEEDLE));
        assert_eq!((got.ctime.as_str(), got.utime.as_str()), ("t0", "t1"));
        // Not in the file, not in the WAL, not in a free page, while the store is open.
        assert!(!contains(&disk_bytes(&p), NEEDLE));
        drop(s);
        assert!(!contains(&disk_bytes(&p), NEEDLE));
        let s = Store::open(&p, &key()).unwrap();
        assert_eq!(s.list_secrets("f-1").unwrap()[0].data, data(NEEDLE));
    }

    #[test]
    fn a_wrong_key_is_refused_naming_the_secret() {
        let p = tmp("wrongkey");
        let s = Store::open(&p, &key()).unwrap();
        s.insert_flow(&flow("a-b-0123456789", "alice")).unwrap();
        s.put_secret("alice", "a-b-0123456789", "db", &data(NEEDLE))
            .unwrap();
        drop(s);
        let other = SecretKey::from_bytes([7; 32]);
        let Err(e) = Store::open(&p, &other) else {
            panic!("a store sealed with another key opened");
        };
        assert!(
            matches!(&e, StoreError::Unsealable { name, flow_id, reason: OpenError::Mismatch } if name == "db" && flow_id == "a-b-0123456789"),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("secret db of Flow a-b-0123456789")
                && msg.contains(super::super::sealing::KEY_ENV)
                && msg.contains(super::super::sealing::KEY_FILE)
                && !msg.contains(NEEDLE),
            "{msg}"
        );
        // A row moved onto another secret does not open either (the name is bound to it).
        let s = Store::open(&p, &key()).unwrap();
        s.conn
            .lock()
            .execute(
                "INSERT INTO secrets (flow_id, name, user, sealed, ctime, utime)
                 SELECT flow_id, 'copy', user, sealed, ctime, utime FROM secrets WHERE name = 'db'",
                [],
            )
            .unwrap();
        assert!(matches!(
            s.get_secret("a-b-0123456789", "copy"),
            Err(StoreError::Unsealable { .. })
        ));
        assert!(s.list_secrets("a-b-0123456789").is_err());
        assert_eq!(
            s.get_secret("a-b-0123456789", "db").unwrap().unwrap().data,
            data(NEEDLE)
        );
    }
}
