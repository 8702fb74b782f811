//! `solstice cache list|clear`: the cache service's entries, read from its
//! index (SQLite, WAL), so both work while the daemon runs.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::error::{CliError, Exit};
use crate::cache_service::{self, Entry};

/// Arguments of `solstice cache`.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

/// What `solstice cache` does.
#[derive(Debug, clap::Subcommand)]
pub enum CacheAction {
    /// List the entries, most recently used first.
    List {
        /// Configuration file (same search order as `exec`).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Only this repository's entries (`owner/name`, any forge).
        #[arg(long)]
        repo: Option<String>,
    },
    /// Remove entries: all of them, or one repository's.
    Clear {
        /// Configuration file (same search order as `exec`).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Only this repository's entries (`owner/name`, any forge).
        #[arg(long)]
        repo: Option<String>,
    },
}

/// `solstice cache`.
pub fn cache_main(args: CacheArgs) -> Result<(), CliError> {
    let (config_path, repo, clear) = match args.action {
        CacheAction::List { config, repo } => (config, repo, false),
        CacheAction::Clear { config, repo } => (config, repo, true),
    };
    let (_, config) = crate::startup::load_config(config_path.as_deref())?;
    let dir = &config.cache.dir;
    let owner = match std::fs::metadata(dir) {
        Ok(m) => m.uid(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no cache yet: {} does not exist", dir.display());
            return Ok(());
        }
        Err(e) => {
            return Err(CliError::new(
                Exit::Failed,
                format!("Could not read the cache directory {}: {e}", dir.display()),
            ));
        }
    };
    let me = crate::store::current_uid();
    if owner != me {
        // SQLite would leave files of this user beside the index, which the
        // daemon (the owner) then cannot open.
        let name = crate::store::user_name(owner);
        return Err(CliError::new(
            Exit::Failed,
            format!(
                "The cache directory {} belongs to {name} (uid {owner}), and this command runs as {} (uid {me}): run it as {name}, e.g. `sudo -u {name} solstice cache ...`, so that the files it creates stay readable by the daemon",
                dir.display(),
                crate::store::user_name(me),
            ),
        ));
    }
    let Some(index) = cache_service::open_index(dir).map_err(|e| CliError::new(Exit::Failed, e))?
    else {
        println!("no cache yet: {} has no index", dir.display());
        return Ok(());
    };
    let entries = index
        .list(repo.as_deref())
        .map_err(|e| CliError::new(Exit::Failed, e))?;
    if clear {
        let files = index
            .remove(&entries)
            .map_err(|e| CliError::new(Exit::Failed, e))?;
        cache_service::remove_entry_files(dir, &files);
        let bytes: u64 = entries.iter().map(|e| e.size).sum();
        println!(
            "removed {} entr{} ({}) from {}",
            entries.len(),
            if entries.len() == 1 { "y" } else { "ies" },
            size(bytes),
            dir.display()
        );
        return Ok(());
    }
    print!("{}", render(&entries));
    let total: u64 = entries.iter().map(|e| e.size).sum();
    println!(
        "{} entr{}, {} of {} ({})",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" },
        size(total),
        size(config.cache.max_bytes),
        dir.display()
    );
    Ok(())
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// One line per entry: repository (with `[pr]` for pull-request entries),
/// key, size, last use.
fn render(entries: &[Entry]) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        return out;
    }
    out.push_str("REPOSITORY\tKEY\tSIZE\tLAST USED\n");
    for e in entries {
        let (forge, repo) = e.scope.split_once('|').unwrap_or(("", &e.scope));
        let scope = if e.isolation.is_empty() {
            String::new()
        } else {
            format!(" [{}]", e.isolation)
        };
        let c = crate::civil::Civil::from_unix(e.used_ms / 1000);
        let used = format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            c.year, c.month, c.day, c.hour, c.min
        );
        out.push_str(&format!(
            "{repo} ({forge}){scope}\t{}\t{}\t{used}\n",
            e.key,
            size(e.size)
        ));
    }
    out
}
