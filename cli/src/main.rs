//! `potluck`: put, get, list, stat and remove objects in a Potluck fleet, and
//! run a local fleet for development (`potluck dev up`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use potluck_cli::address::{parse_range, BucketPrefix, ObjectAddr};
use potluck_cli::client::{ByteRange, Client, ClientError, ClientOptions, Credentials, Progress};
use potluck_cli::crypt::{ContentKey, CryptError, Layout, DEFAULT_CHUNK_SIZE};
use potluck_cli::dev_cluster::{DevCluster, DevClusterConfig};
use potluck_cli::exit;
use potluck_cli::fleet::{find_agent_bin, Fleet, FleetConfig, FleetError};
use potluck_cli::human::{format_size, format_unix_ms, format_unix_ms_short, parse_size};
use potluck_cli::progress::TransferBar;
use potluck_cli::sealed_object::{self, SealedError};
use potluck_cli::share;
use potluck_cli::status;
use tokio::io::{AsyncRead, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(
    name = "potluck",
    version,
    about = "Store and fetch objects in a Potluck fleet, or run one locally",
    after_help = "Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 unavailable, 5 invalid argument or failed precondition, 6 not authenticated or permission denied.\n\nStart a local fleet with `potluck dev up`, then e.g. `echo hi | potluck put demo/hi.txt`."
)]
struct Cli {
    /// Agents to talk to, comma-separated; any agent is a gateway, and calls
    /// are spread over those that answer.
    #[arg(
        long,
        global = true,
        env = "POTLUCK_ENDPOINT",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7100",
        value_name = "URL"
    )]
    endpoint: Vec<String>,

    /// Pool to address [default: the bucket's own pool, else the fleet's "default" pool]
    #[arg(long, global = true, env = "POTLUCK_POOL", value_name = "NAME")]
    pool: Option<String>,

    /// Access key id of the bucket's credentials Secret (`accessKeyId`)
    #[arg(
        long,
        global = true,
        env = "POTLUCK_ACCESS_KEY",
        value_name = "ID",
        requires = "secret_key"
    )]
    access_key: Option<String>,

    /// Secret of the bucket's credentials Secret (`secretAccessKey`); prefer the
    /// environment variable, since arguments are visible to other local users
    #[arg(
        long,
        global = true,
        env = "POTLUCK_SECRET_KEY",
        value_name = "SECRET",
        hide_env_values = true,
        requires = "access_key"
    )]
    secret_key: Option<String>,

    /// The bucket's credentials Secret as a mounted directory (files accessKeyId and
    /// secretAccessKey) or a file of accessKeyId=... and secretAccessKey=... lines;
    /// --access-key and --secret-key win when both are given
    #[arg(
        long,
        global = true,
        env = "POTLUCK_CREDENTIALS",
        value_name = "DIR|FILE"
    )]
    credentials: Option<PathBuf>,

    /// This client's TLS files: ca.pem (the cluster CA), cert.pem and key.pem (a
    /// client certificate of that CA). Needed by fleets that run mutual TLS, which
    /// is the default; `potluck dev up` prints where its client files are
    #[arg(long, global = true, env = "POTLUCK_TLS_DIR", value_name = "DIR")]
    tls_dir: Option<PathBuf>,

    /// Also use every member the cluster map lists as a gateway, so one address (a
    /// Service) is enough to spread transfers over the whole fleet. Only where the
    /// members' own addresses are reachable, e.g. inside the cluster.
    #[arg(long, global = true, env = "POTLUCK_DISCOVER")]
    discover: bool,

    #[command(subcommand)]
    command: Command,
}

/// What `get` reads: an object by address, or what a share link opens.
#[derive(Debug, Clone)]
enum GetTarget {
    Object(ObjectAddr),
    Link(Box<share::Link>),
}

fn parse_get_target(arg: &str) -> Result<GetTarget, String> {
    if share::looks_like_link(arg) {
        return share::Link::parse(arg)
            .map(|l| GetTarget::Link(Box::new(l)))
            .map_err(|e| e.to_string());
    }
    arg.parse()
        .map(GetTarget::Object)
        .map_err(|e: potluck_cli::address::AddressError| e.to_string())
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct ShareArgs {
    #[command(subcommand)]
    command: Option<ShareCommand>,
    /// What to share: BUCKET/KEY, or with --prefix BUCKET/PREFIX (BUCKET/ alone: the whole bucket)
    #[arg(value_name = "BUCKET/KEY")]
    target: Option<String>,
    /// How long the link works: e.g. 30m, 24h, 7d (at most 366d)
    #[arg(long, default_value = "24h", value_parser = share::parse_expiry)]
    expires: Duration,
    /// Share every key under the prefix instead of one object
    #[arg(long)]
    prefix: bool,
    /// The object was put with this key (`put --encrypt-key`): the link carries it in its
    /// #fragment, which no agent ever sees, so `potluck get LINK` decrypts. Anyone with the
    /// link can read every object sealed with this key: seal what you share with its own key
    #[arg(long, value_name = "FILE")]
    encrypt_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum ShareCommand {
    /// List a bucket's share links (ids, what they open, expiry, revoked)
    Ls {
        #[arg(value_name = "BUCKET")]
        bucket: String,
    },
    /// Revoke a link by id (from `share ls`); agents refuse it within seconds
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upload FILE (or stdin) as BUCKET/KEY
    Put {
        /// Where to store it, e.g. photos/2024/cat.jpg (the key may contain '/')
        #[arg(value_name = "BUCKET/KEY")]
        object: ObjectAddr,
        /// File to upload; stdin when omitted or "-"
        #[arg(value_name = "FILE|-")]
        file: Option<PathBuf>,
        /// Encrypt with the key in FILE (from `potluck key new`) before
        /// anything leaves this machine; members store only ciphertext
        #[arg(long, env = "POTLUCK_KEY_FILE", value_name = "FILE")]
        encrypt_key: Option<PathBuf>,
        /// Upload FILE from its beginning even if an earlier run of the same
        /// command was interrupted (which is otherwise resumed)
        #[arg(long)]
        new_upload: bool,
        /// Send at most this many bytes per second (e.g. 20MiB), leaving
        /// bandwidth to others on a shared link
        #[arg(long, value_name = "SIZE", value_parser = parse_rate)]
        limit_rate: Option<u64>,
    },
    /// Download BUCKET/KEY, or what a share link opens, into FILE (or stdout)
    Get {
        /// The object to read, e.g. photos/2024/cat.jpg, or a share link from `potluck share`
        /// (no account needed; a link with #k=... is decrypted here, the key never sent)
        #[arg(value_name = "BUCKET/KEY|LINK", value_parser = parse_get_target)]
        object: GetTarget,
        /// File to write (replaced only once the download is complete);
        /// stdout when omitted or "-"
        #[arg(value_name = "FILE|-")]
        file: Option<PathBuf>,
        /// Only these bytes: START-END (END inclusive) or START- (to the end);
        /// of the plaintext when decrypting
        #[arg(long, value_name = "START-END", value_parser = parse_range)]
        range: Option<ByteRange>,
        /// Decrypt with the key in FILE and verify every chunk; a wrong key or
        /// altered object fails (exit 5) without leaving FILE behind
        #[arg(long, env = "POTLUCK_KEY_FILE", value_name = "FILE")]
        encrypt_key: Option<PathBuf>,
        /// The bytes as stored: no decryption, and no refusal of an
        /// encrypted object read without its key
        #[arg(long)]
        raw: bool,
    },
    /// List the keys of a bucket, optionally under a prefix
    Ls {
        /// A bucket, optionally with a key prefix, e.g. photos or photos/2024/
        #[arg(value_name = "BUCKET[/PREFIX]")]
        target: BucketPrefix,
        /// Also show size and creation time (UTC)
        #[arg(long, short = 'l')]
        long: bool,
    },
    /// Delete BUCKET/KEY
    Rm {
        /// The object to delete, e.g. photos/2024/cat.jpg
        #[arg(value_name = "BUCKET/KEY")]
        object: ObjectAddr,
    },
    /// Show BUCKET/KEY's size, version, time, hash and erasure coding
    Stat {
        /// The object to describe, e.g. photos/2024/cat.jpg
        #[arg(value_name = "BUCKET/KEY")]
        object: ObjectAddr,
    },
    /// Show the fleet on one screen: members, their use, pools and their health.
    /// Exits 4 when a pool is unavailable
    Status {
        /// Seconds to wait for each agent
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Make a link that reads BUCKET/KEY (or every key under a prefix) without an account,
    /// until it expires or is revoked; `share ls BUCKET` and `share revoke ID` manage them.
    /// Needs the bucket's key
    Share(ShareArgs),
    /// Content keys for client-side encryption (`put/get --encrypt-key`)
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Local development fleet
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Write a new random 32-byte key (base64url text) to FILE, readable
    /// only by you, or print it when FILE is omitted or "-". Keep a copy:
    /// objects encrypted with a lost key cannot be read by anyone
    New {
        /// Where to write it; an existing file is never overwritten
        #[arg(value_name = "FILE|-")]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum DevCommand {
    /// Start a fleet of local agents and keep it running until Ctrl-C
    Up(DevUpArgs),
}

#[derive(Args, Debug)]
struct DevUpArgs {
    /// Number of agents (each its own failure domain)
    #[arg(long, default_value_t = 6)]
    agents: usize,
    /// Where agent data and logs live (kept across runs)
    #[arg(long, default_value = "./potluck-data")]
    dir: PathBuf,
    /// Data shards per stripe
    #[arg(long, default_value_t = 4)]
    k: u32,
    /// Parity shards per stripe (agents that may be lost)
    #[arg(long, default_value_t = 2)]
    m: u32,
    /// Shard size, e.g. 1MiB or 256KiB
    #[arg(long, default_value = "1MiB", value_parser = parse_size, value_name = "SIZE")]
    chunk_size: u64,
    /// Placement groups of the pool (a power of two)
    #[arg(long, default_value_t = 128)]
    pgs: u32,
    /// Capacity each agent offers, e.g. 10GiB
    #[arg(long, default_value = "10GiB", value_parser = parse_size, value_name = "SIZE")]
    capacity: u64,
    /// Agent i serves gRPC on P+i and metrics on P+100+i; 0 picks free ports
    #[arg(long, default_value_t = 7100, value_name = "P")]
    base_port: u16,
    /// Run the whole system against this API server: install the CRDs, start the operator,
    /// run the agents in Kubernetes mode and create the pool (`scripts/fleet.sh` starts a
    /// local control plane and passes its kubeconfig here)
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
}

/// A running dev fleet: agents with maps pushed by the CLI, or the whole system with the
/// operator publishing maps.
enum Running {
    Plain(Box<Fleet>),
    Kube(Box<DevCluster>),
}

impl Running {
    fn fleet(&mut self) -> &mut Fleet {
        match self {
            Running::Plain(f) => f,
            Running::Kube(c) => &mut c.fleet,
        }
    }

    async fn shutdown(self) -> Result<()> {
        match self {
            Running::Plain(f) => f.shutdown().await?,
            Running::Kube(c) => c.shutdown().await?,
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for stdin readers parked in blocking threads.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Prints `error: ...` and a hint, and picks the exit code.
fn report(err: &anyhow::Error) -> ExitCode {
    if is_broken_pipe(err) {
        // The reader went away (`potluck ls b | head`): not our failure.
        return ExitCode::SUCCESS;
    }
    let mut code = exit::OTHER;
    let mut hint = None;
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            code = exit::client_exit_code(e);
            hint = exit::client_hint(e);
            break;
        }
        if let Some(e) = cause.downcast_ref::<FleetError>() {
            hint = exit::fleet_hint(e);
            break;
        }
        let crypt = match cause.downcast_ref::<SealedError>() {
            Some(SealedError::Client(e)) => {
                code = exit::client_exit_code(e);
                hint = exit::client_hint(e);
                break;
            }
            Some(SealedError::Crypt(e)) => Some(e),
            None => cause.downcast_ref::<CryptError>(),
        };
        if let Some(e) = crypt {
            code = crypt_exit_code(e);
            hint = crypt_hint(e);
            break;
        }
    }
    eprintln!("error: {}", error_text(err));
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
    ExitCode::from(code)
}

/// The error and its causes on one line, skipping causes already quoted.
fn error_text(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Failures of the content itself (wrong key, altered object) are the
/// person's to fix, like an invalid argument: 5. Local I/O is not.
fn crypt_exit_code(err: &CryptError) -> u8 {
    match err {
        CryptError::Read(_) | CryptError::Write(_) | CryptError::Random(_) => exit::OTHER,
        _ => exit::INVALID,
    }
}

fn crypt_hint(err: &CryptError) -> Option<&'static str> {
    Some(match err {
        CryptError::BadKeyText(_) | CryptError::KeyFile { .. } => {
            "pass a key file written by `potluck key new` (--encrypt-key FILE or POTLUCK_KEY_FILE)"
        }
        CryptError::KeyNeeded => {
            "pass the key it was written with: --encrypt-key FILE (or set POTLUCK_KEY_FILE); --raw fetches the ciphertext as stored"
        }
        CryptError::NotEncrypted => {
            "it is stored unencrypted: read it without --encrypt-key (and with POTLUCK_KEY_FILE unset), or with --raw"
        }
        CryptError::WrongKey => {
            "use the key file this object was put with; a key cannot be recovered from the object"
        }
        CryptError::Tampered { .. }
        | CryptError::Truncated
        | CryptError::TrailingData
        | CryptError::ImpossibleSize(_) => {
            "the stored ciphertext was altered or damaged and nothing unverified was written; restore the object from another copy (`potluck get --raw` fetches the stored bytes for inspection)"
        }
        CryptError::UnsupportedVersion(_) | CryptError::UnsupportedCipher(_) => {
            "a newer potluck wrote it; upgrade this one"
        }
        CryptError::Changed { .. } => "it was overwritten while it was read; run the command again",
        CryptError::RangeOutOfBounds { .. } => {
            "ranges of an encrypted object count plaintext bytes; `potluck stat` shows its plaintext size"
        }
        _ => return None,
    })
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let io = match cause.downcast_ref::<ClientError>() {
            Some(ClientError::Output(e)) => Some(e),
            _ => match cause.downcast_ref::<CryptError>() {
                Some(CryptError::Write(e)) => Some(e),
                _ => match cause.downcast_ref::<SealedError>() {
                    Some(SealedError::Crypt(CryptError::Write(e)))
                    | Some(SealedError::Client(ClientError::Output(e))) => Some(e),
                    _ => cause.downcast_ref::<std::io::Error>(),
                },
            },
        };
        io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> Result<()> {
    if let Command::Dev {
        command: DevCommand::Up(args),
    } = cli.command
    {
        return dev_up(args).await;
    }
    let tls = cli
        .tls_dir
        .as_deref()
        // An empty POTLUCK_TLS_DIR means none, as unset would.
        .filter(|d| !d.as_os_str().is_empty())
        .map(potluck_tls::Material::read_dir)
        .transpose()?;
    if let Command::Status { timeout } = cli.command {
        let fleet = status::fetch(
            &cli.endpoint,
            Duration::from_secs(timeout.max(1)),
            tls.as_ref(),
        )
        .await?;
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(status::render(&fleet).as_bytes())?;
        stdout.flush()?;
        if status::worst_health(&fleet) == potluck_api::PoolHealth::Unavailable {
            std::process::exit(i32::from(exit::UNAVAILABLE));
        }
        return Ok(());
    }
    if let Command::Key {
        command: KeyCommand::New { file },
    } = cli.command
    {
        return key_new(stdio_path(file));
    }
    let credentials = match (&cli.access_key, &cli.secret_key, &cli.credentials) {
        // A link is its own credential: keys in the environment are not sent with it.
        _ if matches!(
            &cli.command,
            Command::Get {
                object: GetTarget::Link(_),
                ..
            }
        ) =>
        {
            let Command::Get {
                object: GetTarget::Link(link),
                ..
            } = &cli.command
            else {
                unreachable!("matched above")
            };
            Some(Credentials::share_link(&link.token)?)
        }
        (Some(id), Some(secret), _) => Some(Credentials::new(id, secret)?),
        (_, _, Some(path)) => Some(Credentials::from_path(path)?),
        _ => None,
    };
    let options = ClientOptions {
        pool: cli.pool.clone().unwrap_or_default(),
        credentials,
        tls,
        discover: cli.discover,
        ..ClientOptions::default()
    };
    let client = Client::connect_with(&cli.endpoint, options).await?;
    match cli.command {
        Command::Put {
            object,
            file,
            encrypt_key,
            new_upload,
            limit_rate,
        } => {
            let key = encrypt_key.map(|p| ContentKey::read_file(&p)).transpose()?;
            let how = potluck_cli::resume::PutOptions {
                new_upload,
                limit_rate,
            };
            put(&client, &object, stdio_path(file), key.as_ref(), how).await
        }
        Command::Get {
            object,
            file,
            range,
            encrypt_key,
            raw,
        } => {
            let (object, link_key) = match object {
                GetTarget::Object(o) => (o, None),
                GetTarget::Link(l) => {
                    let l = *l;
                    (
                        ObjectAddr {
                            bucket: l.bucket,
                            key: l.key,
                        },
                        l.content_key,
                    )
                }
            };
            let mode = match (encrypt_key, link_key) {
                _ if raw => ReadMode::Raw,
                (_, Some(text)) => ReadMode::Decrypt(ContentKey::parse(&text)?),
                (Some(path), None) => ReadMode::Decrypt(ContentKey::read_file(&path)?),
                (None, None) => ReadMode::Refuse,
            };
            get(&client, &object, stdio_path(file), range, &mode).await
        }
        Command::Ls { target, long } => ls(&client, &target, long).await,
        Command::Rm { object } => {
            let version = client.delete(&object.bucket, &object.key).await?;
            println!("removed {object} (tombstone version {version})");
            Ok(())
        }
        Command::Stat { object } => stat(&client, &object).await,
        Command::Share(args) => share_command(&client, args).await,
        Command::Dev { .. } | Command::Status { .. } | Command::Key { .. } => {
            unreachable!("handled above")
        }
    }
}

/// `potluck share ...`: make, list or revoke links.
async fn share_command(client: &Client, args: ShareArgs) -> Result<()> {
    match args.command {
        Some(ShareCommand::Ls { bucket }) => {
            let shares = share::list(client, &bucket).await?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let mut text = String::new();
            for s in &shares {
                let state = if s.revoked {
                    "revoked"
                } else if s.expires_unix <= now {
                    "expired"
                } else {
                    "active"
                };
                let what = if s.prefix {
                    format!("{}/{}*", s.bucket, s.path)
                } else {
                    format!("{}/{}", s.bucket, s.path)
                };
                text.push_str(&format!(
                    "{}  {:<7}  expires {}  {what}\n",
                    s.id,
                    state,
                    format_unix_ms(s.expires_unix.saturating_mul(1000))
                ));
            }
            std::io::stdout().lock().write_all(text.as_bytes())?;
            Ok(())
        }
        Some(ShareCommand::Revoke { id }) => {
            let s = share::revoke(client, &id).await?;
            println!(
                "revoked {} ({}/{}); agents refuse it once the next cluster map reaches them (seconds)",
                s.id, s.bucket, s.path
            );
            Ok(())
        }
        None => {
            let Some(target) = args.target else {
                bail!("name what to share: potluck share BUCKET/KEY [--expires 24h] [--prefix]");
            };
            let Some((bucket, path)) = target.split_once('/') else {
                bail!("{target:?} has no key; write BUCKET/KEY (or BUCKET/PREFIX with --prefix)");
            };
            if path.is_empty() && !args.prefix {
                bail!(
                    "{target:?} has no key; write BUCKET/KEY, or --prefix to share a whole bucket"
                );
            }
            let key = args
                .encrypt_key
                .map(|p| ContentKey::read_file(&p))
                .transpose()?;
            let (info, link) = share::create(
                client,
                bucket,
                path,
                args.prefix,
                args.expires,
                key.as_ref(),
            )
            .await?;
            eprintln!(
                "share {} of {}/{}{} until {} (revoke: potluck share revoke {})",
                info.id,
                info.bucket,
                info.path,
                if info.prefix { "*" } else { "" },
                format_unix_ms(info.expires_unix.saturating_mul(1000)),
                info.id
            );
            println!("{link}");
            Ok(())
        }
    }
}

/// `None` for stdin/stdout: the argument was omitted or "-".
fn stdio_path(file: Option<PathBuf>) -> Option<PathBuf> {
    file.filter(|p| p.as_os_str() != "-")
}

type Input = Box<dyn AsyncRead + Unpin + Send>;

/// Opens the upload source and learns its size when it has one, so the
/// server can check it and the bar can show a percentage.
async fn open_input(file: Option<&Path>) -> Result<(Input, Option<u64>)> {
    if let Some(path) = file {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let meta = file
            .metadata()
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            bail!(
                "{} is a directory; upload files one at a time",
                path.display()
            );
        }
        return Ok((Box::new(file), meta.is_file().then_some(meta.len())));
    }
    // `potluck put b/k < file`: stdin is a regular file with a known size.
    #[cfg(unix)]
    {
        use std::io::Seek;
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() {
            let mut file = std::fs::File::from(fd);
            if let (Ok(meta), Ok(pos)) = (file.metadata(), file.stream_position()) {
                if meta.is_file() {
                    let size = meta.len().saturating_sub(pos);
                    return Ok((Box::new(tokio::fs::File::from_std(file)), Some(size)));
                }
            }
        }
    }
    if std::io::stdin().is_terminal() {
        eprintln!("reading the object from stdin; end it with Ctrl-D");
    }
    Ok((Box::new(tokio::io::stdin()), None))
}

fn parse_rate(input: &str) -> std::result::Result<u64, String> {
    match potluck_cli::human::parse_size(input) {
        Ok(0) => Err("the rate must be above 0 bytes per second".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Files from this size on are uploaded resumably: below it, running the command again costs
/// little, and the upload record is not worth its writes.
const RESUMABLE_FROM: u64 = 16 << 20;

async fn put(
    client: &Client,
    object: &ObjectAddr,
    file: Option<PathBuf>,
    key: Option<&ContentKey>,
    how: potluck_cli::resume::PutOptions,
) -> Result<()> {
    let (input, size) = open_input(file.as_deref()).await?;
    let input: Input = match how.limit_rate {
        Some(rate) => Box::new(potluck_cli::rate::Throttled::new(input, rate)),
        None => input,
    };
    let mut bar = TransferBar::new(format!("put {object}"), std::io::stderr().is_terminal());
    // A plain file of known size is uploaded resumably; sealed content is not (its nonces
    // are random, so a second run would not send the same bytes).
    if let (Some(path), Some(size @ RESUMABLE_FROM..), None) = (file.as_deref(), size, key) {
        drop(input);
        let outcome = potluck_cli::resume::put_file(
            client,
            &object.bucket,
            &object.key,
            (path, size),
            how,
            |p| bar.update(p),
        )
        .await
        .map_err(|e| match e {
            potluck_cli::resume::ResumeError::Client(c) => anyhow::Error::from(c),
            e @ (potluck_cli::resume::ResumeError::Changed { .. }
            | potluck_cli::resume::ResumeError::BadRecord { .. }) => {
                ClientError::FailedPrecondition(e.to_string()).into()
            }
            e => e.into(),
        })?;
        bar.finish();
        let (stored, version) = outcome
            .response
            .info
            .as_ref()
            .map_or((size, 0), |i| (i.size, i.version));
        println!(
            "put {object}: {} ({stored} bytes), version {version}; sent {} bytes{}",
            format_size(stored),
            outcome.sent,
            if outcome.skipped > 0 {
                format!(
                    ", resumed after {} bytes an interrupted run had stored",
                    outcome.skipped
                )
            } else {
                String::new()
            }
        );
        if outcome.response.degraded_stripes > 0 {
            eprintln!(
                "warning: {} stripe(s) were stored without some of their members; the fleet heals them when those members return",
                outcome.response.degraded_stripes
            );
        }
        return Ok(());
    }
    let response = match key {
        Some(key) => {
            sealed_object::put_sealed(client, &object.bucket, &object.key, input, size, key, |p| {
                bar.update(p)
            })
            .await?
        }
        None => {
            client
                .put(&object.bucket, &object.key, input, size, |p| bar.update(p))
                .await?
        }
    };
    bar.finish();
    let (stored, version) = response
        .info
        .as_ref()
        .map_or((size.unwrap_or(0), 0), |i| (i.size, i.version));
    match key {
        Some(_) => {
            let plain = Layout::new(DEFAULT_CHUNK_SIZE, stored).map_or(0, |l| l.plain_len);
            println!(
                "put {object}: {} ({plain} bytes), encrypted ({stored} bytes stored), version {version}",
                format_size(plain)
            );
        }
        None => println!(
            "put {object}: {} ({stored} bytes), version {version}",
            format_size(stored)
        ),
    }
    if response.degraded_stripes > 0 {
        eprintln!(
            "warning: {} stripe(s) were stored without some of their members; the fleet heals them when those members return",
            response.degraded_stripes
        );
    }
    Ok(())
}

/// How `get` treats an object that may be encrypted.
enum ReadMode {
    /// Verify and decrypt with this key; refuse an unencrypted object, which
    /// could be a substitute for the one that was put.
    Decrypt(ContentKey),
    /// Copy as stored, but refuse an encrypted object rather than print
    /// ciphertext to someone who forgot the key.
    Refuse,
    /// Copy as stored, whatever it is (`--raw`).
    Raw,
}

/// Reads the object into `out` as `mode` says; returns the bytes written.
async fn fetch_into<W>(
    client: &Client,
    object: &ObjectAddr,
    range: Option<ByteRange>,
    mode: &ReadMode,
    out: &mut W,
    progress: impl FnMut(Progress),
) -> Result<u64>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let (bucket, key) = (&object.bucket, &object.key);
    // The server's errors name the object already; the content's do not.
    let named = |e: SealedError| match e {
        SealedError::Crypt(e) => anyhow::Error::new(e).context(format!("reading {object}")),
        SealedError::Client(e) => e.into(),
    };
    Ok(match mode {
        ReadMode::Decrypt(secret) => {
            sealed_object::get_sealed(client, bucket, key, range, out, secret, progress)
                .await
                .map_err(named)?
                .written
        }
        ReadMode::Refuse => {
            let info = sealed_object::get_unsealed(client, bucket, key, range, out, progress)
                .await
                .map_err(named)?;
            potluck_cli::client::expected_length(info.size, range)
        }
        ReadMode::Raw => {
            let info = client.get(bucket, key, range, out, progress).await?;
            potluck_cli::client::expected_length(info.size, range)
        }
    })
}

async fn get(
    client: &Client,
    object: &ObjectAddr,
    file: Option<PathBuf>,
    range: Option<ByteRange>,
    mode: &ReadMode,
) -> Result<()> {
    let stderr_tty = std::io::stderr().is_terminal();
    let Some(path) = file else {
        let mut stdout = tokio::io::stdout();
        // No bar over binary data in the same terminal.
        let show = stderr_tty && !std::io::stdout().is_terminal();
        let mut bar = TransferBar::new(format!("get {object}"), show);
        let fetched = fetch_into(client, object, range, mode, &mut stdout, |p| bar.update(p)).await;
        // Flushed even after a failure: the verified chunks before a bad one
        // are all the reader gets, and they should arrive whole.
        let flushed = stdout.flush().await;
        fetched?;
        flushed?;
        return Ok(());
    };
    // Write next to the target and rename at the end, so a failed download
    // (or one that failed to verify) never leaves a file that looks complete.
    let mut partial = path.clone().into_os_string();
    partial.push(".potluck-partial");
    let partial = PathBuf::from(partial);
    let mut out = tokio::fs::File::create(&partial)
        .await
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let mut bar = TransferBar::new(format!("get {object}"), stderr_tty);
    let result = fetch_into(client, object, range, mode, &mut out, |p| bar.update(p)).await;
    bar.finish();
    let written = match result {
        Ok(written) => written,
        Err(e) => {
            drop(out);
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    out.sync_all()
        .await
        .with_context(|| format!("cannot write {}", partial.display()))?;
    drop(out);
    tokio::fs::rename(&partial, &path)
        .await
        .with_context(|| format!("cannot move {} into place", partial.display()))?;
    let verified = match mode {
        ReadMode::Decrypt(_) => ", decrypted and verified",
        _ => "",
    };
    println!(
        "got {object} -> {}: {} ({written} bytes){verified}",
        path.display(),
        format_size(written)
    );
    Ok(())
}

/// `potluck key new`: the key file is created, never replaced (replacing a
/// key loses every object sealed with it), and readable by its owner only.
fn key_new(file: Option<PathBuf>) -> Result<()> {
    let key = ContentKey::generate()?;
    let text = format!("{}\n", key.to_text());
    let Some(path) = file else {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        return Ok(());
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut out = match options.open(&path) {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} already exists; a key is never overwritten (objects sealed with it would be lost): pick another name or remove it yourself",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote a new key to {}; keep a copy somewhere safe: objects encrypted with it cannot be read without it",
        path.display()
    );
    Ok(())
}

async fn ls(client: &Client, target: &BucketPrefix, long: bool) -> Result<()> {
    let mut token = String::new();
    loop {
        let page = client
            .list(&target.bucket, &target.prefix, &token, 0)
            .await?;
        // One write per page: listings can be long and stdout may be a pipe.
        let mut text = String::new();
        for object in &page.objects {
            if long {
                text.push_str(&format!(
                    "{:>10}  {}  {}\n",
                    format_size(object.size),
                    format_unix_ms_short(object.created_unix_ms),
                    object.key
                ));
            } else {
                text.push_str(&object.key);
                text.push('\n');
            }
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        if page.next_page_token == token {
            bail!("the listing returned the same page token twice; the server may be misbehaving");
        }
        token = page.next_page_token;
    }
}

async fn stat(client: &Client, object: &ObjectAddr) -> Result<()> {
    let info = client.stat(&object.bucket, &object.key).await?;
    let pool = if info.pool.is_empty() {
        "default"
    } else {
        &info.pool
    };
    println!("key:        {}/{}", info.bucket, info.key);
    println!("pool:       {pool}");
    println!(
        "size:       {} ({} bytes)",
        format_size(info.size),
        info.size
    );
    println!("version:    {}", info.version);
    println!("created:    {}", format_unix_ms(info.created_unix_ms));
    println!("blake3:     {}", info.blake3);
    println!(
        "erasure:    k={} m={} ({}+{}: survives {} lost shards per stripe)",
        info.k, info.m, info.k, info.m, info.m
    );
    println!(
        "chunk size: {} ({} bytes)",
        format_size(info.chunk_size),
        info.chunk_size
    );
    // The size above is what the members store; for an encrypted object the
    // plaintext size follows from it and the header, without the key.
    match sealed_object::probe(client, &object.bucket, &object.key, &info).await {
        Ok(None) => println!("encrypted:  no"),
        Ok(Some(Ok((header, layout)))) => println!(
            "encrypted:  yes, XChaCha20-Poly1305 in {} chunks; plaintext {} ({} bytes); size above is the ciphertext",
            format_size(u64::from(header.chunk_size)),
            format_size(layout.plain_len),
            layout.plain_len
        ),
        Ok(Some(Err(e))) => println!("encrypted:  yes, but {e}"),
        Err(e) => println!("encrypted:  unknown ({e})"),
    }
    Ok(())
}

/// SIGINT, SIGTERM or SIGHUP: any of them means "stop the fleet".
struct ShutdownSignals {
    #[cfg(unix)]
    signals: Vec<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn install() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let kinds = [
                SignalKind::interrupt(),
                SignalKind::terminate(),
                SignalKind::hangup(),
            ];
            let signals = kinds
                .into_iter()
                .map(signal)
                .collect::<std::io::Result<Vec<_>>>()
                .context("cannot install signal handlers")?;
            Ok(Self { signals })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let waits = self.signals.iter_mut().map(|s| Box::pin(s.recv()));
            futures::future::select_all(waits).await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn dev_up(args: DevUpArgs) -> Result<()> {
    // Before any agent exists: a Ctrl-C during startup must still clean up.
    let mut signals = ShutdownSignals::install()?;
    let width = u64::from(args.k) + u64::from(args.m);
    if (args.agents as u64) < width {
        bail!(
            "{} agents cannot hold {}+{} stripes: every stripe needs k+m={width} agents in distinct failure domains; pass --agents {width} or more, or lower --k/--m",
            args.agents,
            args.k,
            args.m
        );
    }
    let mut cfg = FleetConfig::new(&args.dir);
    cfg.agent_bin = find_agent_bin()?;
    cfg.agents = args.agents;
    cfg.k = args.k;
    cfg.m = args.m;
    cfg.chunk_size = args.chunk_size;
    cfg.pg_count = args.pgs;
    cfg.capacity_bytes = args.capacity;
    cfg.base_port = Some(args.base_port);
    cfg.own_process_group = true;
    eprintln!(
        "starting {} agents ({}+{}, {} chunks, {} PGs, {} each) in {} ...",
        args.agents,
        args.k,
        args.m,
        format_size(args.chunk_size),
        args.pgs,
        format_size(args.capacity),
        args.dir.display()
    );
    let start = async {
        Ok::<_, anyhow::Error>(match &args.kubeconfig {
            None => Running::Plain(Box::new(Fleet::start(cfg).await?)),
            Some(kubeconfig) => {
                eprintln!(
                    "installing the CRDs and starting the operator against {} ...",
                    kubeconfig.display()
                );
                let cluster = DevCluster::start(DevClusterConfig::new(cfg, kubeconfig)).await?;
                Running::Kube(Box::new(cluster))
            }
        })
    };
    let running = tokio::select! {
        running = start => running?,
        _ = signals.recv() => {
            // Dropping the half-started fleet kills its agents.
            eprintln!("interrupted; stopped the agents started so far");
            return Ok(());
        }
    };
    let mut running = running;
    let epoch = match &running {
        Running::Plain(f) => f.map().epoch,
        Running::Kube(c) => c
            .pools()
            .get("default")
            .await
            .ok()
            .and_then(|p| p.status)
            .map_or(0, |s| u64::try_from(s.map_epoch).unwrap_or(0)),
    };
    print_howto(running.fleet(), &args, epoch)?;
    let fleet = running.fleet();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            _ = ticker.tick() => {
                for (i, status) in fleet.try_exited() {
                    let quorum = fleet.map().pools.first().map_or(0, |p| p.write_quorum);
                    eprintln!(
                        "warning: {} exited ({status}); its log is {}. Reads survive up to m={} agents down, writes need {quorum} of {} up; restart `potluck dev up` to bring it back",
                        fleet.id(i),
                        fleet.log_path(i).display(),
                        args.m,
                        args.k + args.m,
                    );
                }
            }
        }
    }
    eprintln!("stopping agents (Ctrl-C again to kill them) ...");
    tokio::select! {
        result = running.shutdown() => result?,
        _ = signals.recv() => eprintln!("killed the agents"),
    }
    eprintln!("stopped; data and logs are kept in {}", args.dir.display());
    Ok(())
}

fn print_howto(fleet: &Fleet, args: &DevUpArgs, epoch: u64) -> Result<()> {
    let endpoints = fleet.endpoints();
    let map = fleet.map();
    let first = fleet.grpc_addr(0);
    let mut out = String::new();
    out.push_str(&format!(
        "\nPotluck dev fleet is up: {} agents, pool \"default\" {}+{}, {} chunks, {} PGs, map epoch {}\n",
        fleet.len(),
        args.k,
        args.m,
        format_size(args.chunk_size),
        args.pgs,
        epoch
    ));
    out.push_str(&format!(
        "Data and logs: {} (agent-<i>/ and agent-<i>.log)\n\n",
        args.dir.display()
    ));
    for i in 0..fleet.len() {
        out.push_str(&format!(
            "  {:<9} grpc {:<21} metrics http://{}/metrics\n",
            fleet.id(i),
            fleet.grpc_addr(i).to_string(),
            fleet.metrics_addr(i)
        ));
    }
    for pool in &map.pools {
        if !pool.unplaceable_reason.is_empty() {
            out.push_str(&format!(
                "\nwarning: pool {:?} cannot place data: {}\n",
                pool.name, pool.unplaceable_reason
            ));
        }
    }
    out.push_str("\nTry it from another terminal:\n");
    out.push_str(&format!(
        "  export POTLUCK_ENDPOINT={}\n",
        endpoints.join(",")
    ));
    if let Some(tls) = fleet.client_tls_dir() {
        // Agents speak only mutual TLS: clients need the fleet's client certificate.
        out.push_str(&format!("  export POTLUCK_TLS_DIR={}\n", tls.display()));
    }
    out.push_str("  echo 'hello, potluck' | potluck put demo/hello.txt\n");
    out.push_str("  potluck get demo/hello.txt\n");
    out.push_str("  potluck put demo/big.bin ./some-large-file\n");
    out.push_str("  potluck ls demo --long\n");
    out.push_str("  potluck stat demo/hello.txt\n");
    match fleet.client_tls_dir() {
        Some(tls) => {
            let (ca, cert, key) = (
                tls.join("ca.pem"),
                tls.join("cert.pem"),
                tls.join("key.pem"),
            );
            out.push_str(&format!(
                "  grpcurl -cacert {} -cert {} -key {} -authority {} {} list\n",
                ca.display(),
                cert.display(),
                key.display(),
                potluck_tls::AGENT_NAME,
                first
            ));
        }
        None => out.push_str(&format!("  grpcurl -plaintext {first} list\n")),
    }
    out.push_str(&format!(
        "  curl -s http://{}/metrics | head\n",
        fleet.metrics_addr(0)
    ));
    if let Some(kubeconfig) = &args.kubeconfig {
        out.push_str(&format!(
            "  kubectl --kubeconfig {} get storagepools,storagenodes -o wide\n",
            kubeconfig.display()
        ));
        out.push_str(&format!(
            "  kubectl --kubeconfig {} get events -A\n",
            kubeconfig.display()
        ));
        out.push_str(&format!(
            "Operator log: {}\n",
            args.dir.join("operator.log").display()
        ));
    }
    out.push_str("\nCtrl-C stops the fleet; the data stays for the next `potluck dev up`.\n");
    out.push_str(&format!(
        "POTLUCK_FLEET_READY endpoints={}\n",
        endpoints.join(",")
    ));
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(out.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn endpoints_split_on_commas() {
        let cli = Cli::try_parse_from(["potluck", "--endpoint", "http://a:1,b:2", "stat", "b/k"])
            .unwrap();
        assert_eq!(cli.endpoint, ["http://a:1", "b:2"]);
    }

    #[test]
    fn bad_addresses_are_usage_errors() {
        let err = Cli::try_parse_from(["potluck", "put", "nokey"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
        let err = Cli::try_parse_from(["potluck", "get", "b/k", "--range", "9-1"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
        let err = Cli::try_parse_from(["potluck", "dev", "up", "--capacity", "lots"]).unwrap_err();
        assert_eq!(err.exit_code(), i32::from(exit::USAGE));
    }

    #[test]
    fn encryption_flags_parse() {
        let cli = Cli::try_parse_from([
            "potluck",
            "get",
            "b/k",
            "out",
            "--encrypt-key",
            "k.key",
            "--raw",
        ])
        .unwrap();
        let Command::Get {
            encrypt_key, raw, ..
        } = cli.command
        else {
            panic!("not get");
        };
        assert_eq!(encrypt_key, Some(PathBuf::from("k.key")));
        assert!(raw);
        let cli = Cli::try_parse_from(["potluck", "key", "new"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Key {
                command: KeyCommand::New { file: None }
            }
        ));
    }

    #[test]
    fn content_failures_exit_5_and_local_io_1() {
        assert_eq!(crypt_exit_code(&CryptError::WrongKey), exit::INVALID);
        assert_eq!(crypt_exit_code(&CryptError::KeyNeeded), exit::INVALID);
        let tampered = CryptError::Tampered {
            index: 3,
            offset: 3 << 16,
        };
        assert_eq!(crypt_exit_code(&tampered), exit::INVALID);
        assert!(crypt_hint(&tampered).unwrap().contains("altered"));
        let io = CryptError::Write(std::io::Error::other("disk full"));
        assert_eq!(crypt_exit_code(&io), exit::OTHER);
        let err = anyhow::Error::new(SealedError::Crypt(CryptError::WrongKey));
        assert_eq!(report(&err), ExitCode::from(exit::INVALID));
    }

    #[test]
    fn dash_means_stdio() {
        assert_eq!(stdio_path(Some(PathBuf::from("-"))), None);
        assert_eq!(stdio_path(None), None);
        assert_eq!(
            stdio_path(Some(PathBuf::from("x.bin"))),
            Some(PathBuf::from("x.bin"))
        );
    }

    #[test]
    fn dev_up_defaults() {
        let cli = Cli::try_parse_from(["potluck", "dev", "up"]).unwrap();
        let Command::Dev {
            command: DevCommand::Up(args),
        } = cli.command
        else {
            panic!("not dev up");
        };
        assert_eq!(args.agents, 6);
        assert_eq!((args.k, args.m, args.pgs), (4, 2, 128));
        assert_eq!(args.chunk_size, 1 << 20);
        assert_eq!(args.capacity, 10 << 30);
        assert_eq!(args.base_port, 7100);
    }

    #[test]
    fn error_text_skips_repeated_causes() {
        let inner = std::io::Error::other("disk on fire");
        let err = anyhow::Error::new(inner).context("cannot open x: disk on fire");
        assert_eq!(error_text(&err), "cannot open x: disk on fire");
        let err = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&err), "outer: inner");
    }
}
