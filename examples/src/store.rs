//! patch-evaluation's join state in SQLite: crashes and patches waiting for their partner, and
//! the programs already evaluated. Each message is written here before it is acked, so the
//! broker holds nothing for the join (no unacked backlog to stall on), memory stays bounded,
//! and a restarted evaluator remembers what it saw and what it evaluated.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bus::{Error, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::schema::PatchEvaluation;

const BACKEND: &str = "patch-evaluation";

/// Which half of a join a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// A crash detail.
    Crash,
    /// A patch response.
    Patch,
}

impl Half {
    fn as_str(self) -> &'static str {
        match self {
            Half::Crash => "crash",
            Half::Patch => "patch",
        }
    }
}

/// One half, as stored: the CloudEvent id and the event's data as JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The CloudEvent `id`.
    pub event_id: String,
    /// The event's `data`, JSON.
    pub data: String,
    /// The W3C `traceparent` it arrived with, so the evaluation continues its trace even
    /// after a restart.
    pub traceparent: Option<String>,
}

/// A program whose join waited too long: its name and the half that came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The program.
    pub program: String,
    /// Its crash, if that is the half that came.
    pub crash: Option<Held>,
    /// Its patch, if that is the half that came.
    pub patch: Option<Held>,
}

/// The join state, in an SQLite database (a file, or `:memory:`).
#[derive(Debug)]
pub struct JoinStore {
    db: Mutex<Connection>,
}

fn db_error(what: &str, e: rusqlite::Error) -> Error {
    Error::new(
        bus::ErrorKind::Internal,
        BACKEND,
        format!("join store: {what}"),
    )
    .with_source(e)
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl JoinStore {
    /// Opens (or creates) the store at `path`; `:memory:` keeps it in memory.
    pub fn open(path: &Path) -> Result<JoinStore> {
        let db = Connection::open(path).map_err(|e| {
            Error::config(
                BACKEND,
                format!(
                    "app.state_file = {:?} cannot be opened as an SQLite database ({e}); point it at a writable file",
                    path.display()
                ),
            )
        })?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS pending (
                 program TEXT NOT NULL,
                 half TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 data TEXT NOT NULL,
                 received_at INTEGER NOT NULL,
                 PRIMARY KEY (program, half)
             );
             CREATE TABLE IF NOT EXISTS evaluated (
                 program TEXT PRIMARY KEY,
                 evaluation TEXT NOT NULL
             );",
        )
        .map_err(|e| db_error("creating the tables", e))?;
        // Stores written before trace context was kept have no `traceparent` column.
        let has_traceparent = db
            .prepare("SELECT 1 FROM pragma_table_info('pending') WHERE name = 'traceparent'")
            .and_then(|mut s| s.exists([]))
            .map_err(|e| db_error("reading the table layout", e))?;
        if !has_traceparent {
            db.execute_batch("ALTER TABLE pending ADD COLUMN traceparent TEXT;")
                .map_err(|e| db_error("adding the traceparent column", e))?;
        }
        Ok(JoinStore { db: Mutex::new(db) })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `program` was evaluated already.
    pub fn is_evaluated(&self, program: &str) -> Result<bool> {
        self.db()
            .query_row(
                "SELECT 1 FROM evaluated WHERE program = ?1",
                params![program],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(|e| db_error("looking up an evaluation", e))
    }

    /// Keeps one half of `program`'s join (a later copy replaces an earlier one).
    pub fn hold(&self, program: &str, half: Half, held: &Held) -> Result<()> {
        self.db()
            .execute(
                "INSERT OR REPLACE INTO pending
                     (program, half, event_id, data, received_at, traceparent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    program,
                    half.as_str(),
                    held.event_id,
                    held.data,
                    now_secs(),
                    held.traceparent
                ],
            )
            .map(|_| ())
            .map_err(|e| db_error("storing a message", e))
    }

    /// Both halves of `program`, once both arrived.
    pub fn pair(&self, program: &str) -> Result<Option<(Held, Held)>> {
        let db = self.db();
        let get = |half: Half| {
            db.query_row(
                "SELECT event_id, data, traceparent FROM pending WHERE program = ?1 AND half = ?2",
                params![program, half.as_str()],
                |row| {
                    Ok(Held {
                        event_id: row.get(0)?,
                        data: row.get(1)?,
                        traceparent: row.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| db_error("reading a held message", e))
        };
        match (get(Half::Crash)?, get(Half::Patch)?) {
            (Some(crash), Some(patch)) => Ok(Some((crash, patch))),
            _ => Ok(None),
        }
    }

    /// Records `program`'s evaluation and forgets what was held for it.
    pub fn record(&self, evaluation: &PatchEvaluation) -> Result<()> {
        let json = serde_json::to_string(evaluation).map_err(|e| {
            Error::new(bus::ErrorKind::Internal, BACKEND, "evaluation as JSON").with_source(e)
        })?;
        let mut db = self.db();
        let tx = db.transaction().map_err(|e| db_error("a transaction", e))?;
        tx.execute(
            "INSERT OR REPLACE INTO evaluated (program, evaluation) VALUES (?1, ?2)",
            params![evaluation.executable_name, json],
        )
        .map_err(|e| db_error("storing an evaluation", e))?;
        tx.execute(
            "DELETE FROM pending WHERE program = ?1",
            params![evaluation.executable_name],
        )
        .map_err(|e| db_error("forgetting held messages", e))?;
        tx.commit()
            .map_err(|e| db_error("committing an evaluation", e))
    }

    /// Programs with a half held longer than `timeout` and no partner.
    pub fn orphans(&self, timeout: Duration) -> Result<Vec<Orphan>> {
        let cutoff = now_secs() - timeout.as_secs() as i64;
        let db = self.db();
        let mut statement = db
            .prepare(
                "SELECT program, half, event_id, data, traceparent FROM pending
                 WHERE program IN (SELECT program FROM pending GROUP BY program
                                   HAVING COUNT(*) = 1 AND MIN(received_at) <= ?1)",
            )
            .map_err(|e| db_error("finding orphans", e))?;
        let rows = statement
            .query_map(params![cutoff], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    Held {
                        event_id: row.get(2)?,
                        data: row.get(3)?,
                        traceparent: row.get(4)?,
                    },
                ))
            })
            .map_err(|e| db_error("finding orphans", e))?;
        let mut orphans = Vec::new();
        for row in rows {
            let (program, half, held) = row.map_err(|e| db_error("reading an orphan", e))?;
            let (crash, patch) = if half == Half::Crash.as_str() {
                (Some(held), None)
            } else {
                (None, Some(held))
            };
            orphans.push(Orphan {
                program,
                crash,
                patch,
            });
        }
        Ok(orphans)
    }

    /// Every evaluation so far, by program.
    pub fn evaluations(&self) -> Result<BTreeMap<String, PatchEvaluation>> {
        let db = self.db();
        let mut statement = db
            .prepare("SELECT program, evaluation FROM evaluated")
            .map_err(|e| db_error("listing evaluations", e))?;
        let rows = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(|e| db_error("listing evaluations", e))?;
        let mut evaluations = BTreeMap::new();
        for row in rows {
            let (program, json) = row.map_err(|e| db_error("reading an evaluation", e))?;
            if let Ok(evaluation) = serde_json::from_str(&json) {
                evaluations.insert(program, evaluation);
            }
        }
        Ok(evaluations)
    }

    /// How many programs are evaluated.
    pub fn evaluated_count(&self) -> Result<usize> {
        self.db()
            .query_row("SELECT COUNT(*) FROM evaluated", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(|e| db_error("counting evaluations", e))
    }
}
