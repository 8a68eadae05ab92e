//! The command line: one subcommand per process type and the operator commands.

use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::context::Context;
use crate::policy::Policy;
use crate::pool::PoolName;
use crate::process::ProcessType;
use crate::shutdown::Shutdown;
use crate::{autoscale, checkout, dev, operator, reconcile, refill, shutdown, web};

/// Pools of pre-warmed cloud VMs, handed out over AMQP.
///
/// Configuration comes from the environment (see example.env); `RUST_LOG` sets the log level.
#[derive(Debug, Parser)]
#[command(name = "warmer", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the checkout consumer: answers checkout requests on the `<prefix>.checkout` queue with
    /// the oldest warmed VM of the requested pool.
    Checkout,
    /// Run the refill consumer: boots VMs (WARMER_PROVIDER) until every pool is at its target,
    /// on refill hints (a checkout took a VM or found none) and fill commands from the
    /// `<prefix>.refill` queue.
    Refill,
    /// Run the reconciler: every WARMER_RECONCILE_INTERVAL, compares Redis with the cloud and
    /// deletes orphans and unaccounted VMs, evicts dead, stale and surplus VMs, and sets the
    /// safety brake. At most one is active; others stand by.
    Reconcile,
    /// Serve HTTP on $PORT (default 8080): /health, /metrics (Prometheus) and HireFire's
    /// /hirefire/<HIREFIRE_TOKEN>/info (the backlog of each consumer process type).
    Web,
    /// Scale the checkout and refill dynos on Heroku by their backlogs (waiting requests, missing
    /// VMs) every WARMER_AUTOSCALE_INTERVAL, within WARMER_AUTOSCALE_<TYPE>_MIN and _MAX (needs
    /// HEROKU_API_TOKEN and HEROKU_APP_NAME).
    Autoscale,
    /// Restart Heroku dynos before they swap: follows the app's logs (HEROKU_API_TOKEN,
    /// HEROKU_APP_NAME) and restarts a dyno at WARMER_WATCHDOG_THRESHOLD or on R14, one dyno of
    /// a process type at a time, each at most once per WARMER_WATCHDOG_RESTART_WINDOW.
    Watchdog,
    /// Run the whole system in one process with the local (simulated) cloud, for trying warmer:
    /// creates an example pool if there is none. Prefix and namespace `warmer-dev` unless set.
    Dev,
    /// Check what the processes need (the release phase): the configuration, Redis, RabbitMQ
    /// with the topology declared, and for WARMER_PROVIDER=gce a token and access to the
    /// project. One line per check; exits 2 at the first failure, with its reason.
    Check,
    /// Print the RabbitMQ users warmer's roles need — worker, operator, and warmer's own
    /// processes — each with the narrowest permissions that work, as commands to run with
    /// `rabbitmqctl` and with the management HTTP API (CloudAMQP's). Connects to nothing.
    Permissions {
        /// Only this role's user.
        #[arg(long, value_enum)]
        role: Option<crate::topology::Role>,
    },
    /// Manage pools and their target sizes.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Publish a fill command for one pool, or for all pools, to the refill queue.
    Fill {
        /// The pool to fill, `<image>:<machine_type>[:public]`; all pools when omitted.
        pool: Option<PoolName>,
        /// Operator token (required when WARMER_AUTH_TOKENS is set); defaults to the first of
        /// WARMER_AUTH_TOKENS.
        #[arg(long, env = "WARMER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Plan capacity without a cloud: replay a trace of job arrivals (`unix_seconds,pool` lines)
    /// through the sizer for each policy and compare warm hits and idle VM-minutes; or write a
    /// realistic trace with --generate diurnal.
    Simulate {
        /// The trace to replay (CSV: `unix_seconds,pool`, an optional `timestamp,pool` header).
        #[arg(long, required_unless_present = "generate")]
        trace: Option<std::path::PathBuf>,
        /// How long a boot takes: `45s`, or a range drawn per boot such as `30s-90s`.
        #[arg(long, default_value = "45s")]
        boot_time: String,
        /// A policy to compare: `static:N` or `adaptive[:hit=0.99][:min=N][:max=N]`, either with
        /// `:schedule=CRON@TZ=MIN` options; repeatable.
        #[arg(long = "policy", default_value = "adaptive")]
        policies: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Write a generated trace to stdout instead: `diurnal` (weekday peaks, quiet nights and
        /// weekends, pipeline bursts of 10–40 jobs).
        #[arg(long, value_parser = ["diurnal"], conflicts_with = "trace")]
        generate: Option<String>,
        /// Days of generated trace, from Monday 00:00 UTC.
        #[arg(long, default_value_t = 7)]
        days: u64,
        /// Pools in the generated trace.
        #[arg(long, default_value_t = 20)]
        pools: usize,
        /// Seed of the generated trace (the same seed, the same trace).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also write the comparison as one self-contained HTML file: the trade-off of warm
        /// hits against idle VM-hours (every static target, each policy a point on it), in total
        /// and per pool, demand and the adaptive targets over time, and the table.
        #[arg(long, conflicts_with = "generate")]
        report: Option<std::path::PathBuf>,
    },
    /// Send one checkout request, as a CI worker would, and print the reply. Exits 1 on an
    /// error reply.
    Request {
        /// Image name or Compute Engine image URL.
        #[arg(long)]
        image: String,
        /// Machine type name or Compute Engine machine type URL.
        #[arg(long)]
        machine_type: String,
        /// Ask for a VM with an external IP (the `:public` pool).
        #[arg(long)]
        public_ip: bool,
        /// The site (`org`, `com`) the travis worker would send.
        #[arg(long)]
        site: Option<String>,
        /// How long to wait for the reply (also the request's expiration), e.g. `30s`.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Make the pools what a file (TOML) says: prints the diff against Redis (`+` new, `~`
    /// changed, `-` deleted), then applies every change of it or none, and records each in the
    /// history. A pool has `target = N` (static) or a policy (`max`, `min`, `adaptive`, `hit`,
    /// `schedules`); `warmer export` writes the current pools in this form.
    Apply {
        /// The file, e.g. `pools.toml`.
        #[arg(short = 'f', long = "file")]
        file: std::path::PathBuf,
        /// Print the diff and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Delete the pools the file leaves out (their warmed VMs are recorded for deletion);
        /// without it they are left alone.
        #[arg(long)]
        prune: bool,
        /// Operator token for the fill published after a change (as for `warmer fill`).
        #[arg(long, env = "WARMER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print every pool as a file `warmer apply -f` takes back unchanged.
    Export,
    /// Print the changes operators made, newest first: WHEN (UTC), WHO (`user@host`, the dyno,
    /// or the HTTP API's token), COMMAND, POOL and the CHANGE. The last 10,000 are kept.
    History {
        /// How many entries to print.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only the changes of this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the fleet: a row per pool — POOL, TARGET, MIN and MAX of its policy (`-` without
    /// one), WHY its target is what it is (`static` without a policy; `pending` until a pass
    /// decides under a new one; else `min`, `schedule`, `demand`, `history`, `max` or
    /// `rollover`), READY, BOOTING, HANDED OUT, and the OLDEST warmed VM's age — then rollovers,
    /// the safety brake and the VMs it holds for, the active reconciler and its last pass (or
    /// NONE ACTIVE), orphans awaiting deletion, and each queue's messages and consumers.
    /// With more than one pool shown, a TOTAL row; then the FLEET against WARMER_MAX_VMS.
    Status {
        /// Only the pools whose name matches this glob (`*` any run, `?` one character), e.g.
        /// `'ubuntu-*'`; totals are over these.
        #[arg(long)]
        pool: Option<String>,
        /// Print JSON instead of a table (the same figures; ages in seconds).
        #[arg(long)]
        json: bool,
    },
    /// Show the safety brake: whether it holds, why (the unaccounted VMs against
    /// WARMER_ORPHAN_THRESHOLD, since when) and the unaccounted VMs of the last reconcile pass,
    /// 100 per page. `warmer brake release --yes` releases it.
    Brake {
        #[command(subcommand)]
        command: Option<BrakeCommand>,
        /// Which page of the unaccounted VMs to print.
        #[arg(long, default_value_t = 1)]
        page: usize,
    },
    /// The dead letters of `<prefix>.dead`: list them (secrets redacted), requeue them to the
    /// queue they died in, or purge them. Needs RabbitMQ only.
    #[command(subcommand)]
    Dead(crate::dead_letters::DeadCommand),
}

#[derive(Debug, Subcommand)]
pub enum BrakeCommand {
    /// Release the safety brake once you have looked at the VMs `warmer brake` lists: they no
    /// longer hold it, the next reconcile pass deletes them (unless accounted for by then) and
    /// boots resume. Recorded in the history.
    Release {
        /// Confirm: without it, nothing is released.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// List pools: POOL, TARGET and POLICY (`static`, or its bounds, whether adaptive, its hit
    /// ratio and schedules).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Create a pool or change its target size.
    Set {
        /// `<image>:<machine_type>` or `<image>:<machine_type>:public`.
        pool: PoolName,
        /// Number of warmed VMs to keep ready.
        target: u32,
    },
    /// Delete a pool; its warmed VMs are recorded in `<namespace>:orphaned` for deletion.
    Delete {
        /// `<image>:<machine_type>` or `<image>:<machine_type>:public`.
        pool: PoolName,
    },
    /// Set how an existing pool is sized, replacing its whole policy: the active reconciler then
    /// writes its target every pass, `clamp(max(demand, scheduled min), min, max)`. Use
    /// `warmer simulate` to choose one.
    Policy {
        /// The pool (it must exist: `warmer pool set` creates it).
        pool: PoolName,
        /// The fewest warmed VMs to keep.
        #[arg(long, default_value_t = 0)]
        min: u32,
        /// The most warmed VMs to keep, whatever demand says.
        #[arg(long, required_unless_present = "remove")]
        max: Option<u32>,
        /// Size from measured demand (`on`), or keep the (scheduled) minimum (`off`).
        #[arg(long, value_parser = ["on", "off"], default_value = "off")]
        adaptive: String,
        /// The wanted share of checkouts that find a warm VM, in (0, 1).
        #[arg(long, default_value_t = crate::policy::DEFAULT_HIT)]
        hit: f64,
        /// `CRON@TZ=MIN`: at least MIN VMs while the five-field cron matches the minute in the
        /// IANA time zone, e.g. `* 7-18 * * MON-FRI@Europe/Berlin=20`; repeatable.
        #[arg(long = "schedule")]
        schedules: Vec<String>,
        /// Remove the policy: the pool keeps its current target, static.
        #[arg(long, conflicts_with_all = ["max", "schedules"])]
        remove: bool,
    },
    /// Move a pool to a new image without a cold window: <to> gets <from>'s target and policy
    /// and boots; once it is at target, <from> goes to 0. Aborted, leaving <from> as it was, when
    /// <to>'s boots fail or it is not at target by the deadline.
    Rollover {
        /// The pool to move off: it must have a target above 0.
        from: PoolName,
        /// The new pool (the new image's `<image>:<machine_type>`), without a target yet.
        to: PoolName,
        /// How long <to> may take to reach its target.
        #[arg(long, default_value = "30m", value_parser = parse_duration)]
        deadline: Duration,
    },
}

/// What a command leaves for `main` to print, and whether it failed (`warmer request` got an
/// error reply). Processes print nothing: they log.
pub struct Output {
    pub text: String,
    pub failed: bool,
}

impl From<String> for Output {
    fn from(text: String) -> Self {
        Output {
            text,
            failed: false,
        }
    }
}

impl Command {
    /// The process type a long-running command is (`None` for an operator command).
    pub fn process(&self) -> Option<ProcessType> {
        Some(match self {
            Command::Checkout => ProcessType::Checkout,
            Command::Refill => ProcessType::Refill,
            Command::Reconcile => ProcessType::Reconcile,
            Command::Web => ProcessType::Web,
            Command::Autoscale => ProcessType::Autoscale,
            Command::Dev => ProcessType::Dev,
            Command::Watchdog => ProcessType::Watchdog,
            _ => return None,
        })
    }
}

/// Runs a process type's `run(ctx, shutdown)` until SIGTERM; it prints nothing.
async fn run_process<F, R>(run: F, ctx: Context) -> anyhow::Result<Output>
where
    F: FnOnce(Context, Shutdown) -> R,
    R: std::future::Future<Output = anyhow::Result<()>>,
{
    run(ctx, shutdown::on_signals()?).await?;
    Ok(Output::from(String::new()))
}

/// Neither a Heroku API token nor a dyno: the Heroku processes run locally (`heroku local`).
fn off_heroku(config: &Config) -> bool {
    config.heroku_api_token.is_none() && !config.on_heroku
}

/// Runs the command: a process until SIGTERM, or an operator command once.
pub async fn run(command: Command, config: Config) -> anyhow::Result<Output> {
    let config = match command {
        Command::Dev => config.for_dev()?,
        _ => config,
    };
    let token = config.auth_tokens.first().map(|t| t.expose().to_string());
    if let Some(process) = command.process() {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            commit = env!("WARMER_COMMIT"),
            process = process.name(),
            prefix = config.amqp_prefix,
            namespace = config.redis_namespace,
            "warmer starting"
        );
    }
    if let Command::Dev = command {
        let (config, servers) = dev::bring_up(config).await?;
        let ran = async { run_process(dev::run, Context::new(config).await?).await }.await;
        // Stopped whatever happened (and, were warmer killed, by their guards).
        tokio::task::spawn_blocking(move || servers.stop()).await?;
        return ran;
    }
    let quiet = Output::from(String::new());
    // Simulation needs no server.
    if let Command::Simulate {
        trace,
        boot_time,
        policies,
        json,
        generate,
        days,
        pools,
        seed,
        report,
    } = &command
    {
        let generated = generate.is_some().then_some((*days, *pools, *seed));
        let options = (boot_time.as_str(), policies.as_slice(), *json);
        return crate::sizing::simulate::command(
            trace.as_deref(),
            options,
            generated,
            report.as_deref(),
        )
        .map(Output::from);
    }
    if let Command::Permissions { role } = &command {
        return Ok(operator::permissions(&config, *role).into());
    }
    // The release check connects step by step, saying how far it got.
    if let Command::Check = command {
        crate::check::run(config).await?;
        return Ok(quiet);
    }
    // `warmer web` starts without Redis (its `/health` says Redis is away until it is back);
    // `warmer dead` and `warmer request` need only RabbitMQ.
    let ctx = match command {
        Command::Web | Command::Dead(_) | Command::Request { .. } => Context::lazily(config)?,
        _ => Context::new(config).await?,
    };
    Ok(match command {
        // Done above.
        Command::Check | Command::Simulate { .. } | Command::Permissions { .. } | Command::Dev => {
            quiet
        }
        Command::Autoscale | Command::Watchdog if off_heroku(&ctx.config) => {
            // `heroku local` runs every Procfile line: these have nothing to do there.
            tracing::warn!(
                "HEROKU_API_TOKEN is not set and this is no Heroku dyno: nothing to do here; waiting for SIGTERM"
            );
            shutdown::on_signals()?.wait().await;
            quiet
        }
        Command::Checkout => run_process(checkout::run, ctx).await?,
        Command::Refill => run_process(refill::run, ctx).await?,
        Command::Reconcile => run_process(reconcile::run, ctx).await?,
        Command::Web => run_process(web::run, ctx).await?,
        Command::Autoscale => run_process(autoscale::run, ctx).await?,
        Command::Watchdog => run_process(crate::watchdog::run, ctx).await?,
        Command::Pool(PoolCommand::List { json }) => operator::pool_list(&ctx, json).await?.into(),
        Command::Pool(PoolCommand::Set { pool, target }) => {
            let mut output = operator::pool_set(&ctx, &pool, target).await?;
            publish_fill(&ctx, Some(&pool), token.as_deref(), &mut output).await;
            output.into()
        }
        Command::Pool(PoolCommand::Delete { pool }) => {
            operator::pool_delete(&ctx, &pool).await?.into()
        }
        Command::Pool(PoolCommand::Policy {
            pool,
            min,
            max,
            adaptive,
            hit,
            schedules,
            remove,
        }) => {
            let policy = match (remove, max) {
                (false, Some(max)) => Some(Policy {
                    min,
                    max,
                    adaptive: adaptive == "on",
                    hit,
                    schedules: schedules
                        .iter()
                        .map(|s| s.parse())
                        .collect::<Result<_, String>>()
                        .map_err(|error| {
                            anyhow::anyhow!("policy of {pool} not changed: {error}")
                        })?,
                }),
                _ => None,
            };
            operator::pool_policy(&ctx, &pool, policy.as_ref())
                .await?
                .into()
        }
        Command::Pool(PoolCommand::Rollover { from, to, deadline }) => {
            let mut output = operator::pool_rollover(&ctx, &from, &to, deadline).await?;
            publish_fill(&ctx, Some(&to), token.as_deref(), &mut output).await;
            output.into()
        }
        Command::Fill { pool, token: given } => {
            let token = given.or(token);
            operator::fill(&ctx, pool.as_ref(), token.as_deref())
                .await?
                .into()
        }
        Command::Request {
            image,
            machine_type,
            public_ip,
            site,
            timeout,
        } => {
            let request = operator::Request {
                image,
                machine_type,
                public_ip,
                site,
                timeout,
            };
            let (reply, failed) = operator::request(&ctx, &request).await?;
            Output {
                text: format!("{reply}\n"),
                failed,
            }
        }
        Command::Status { pool, json } => {
            use std::io::IsTerminal as _;
            let options = operator::StatusOptions {
                json,
                pool,
                color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            };
            operator::status(&ctx, &options).await?.into()
        }
        Command::Brake {
            command: None,
            page,
        } => operator::brake::show(&ctx, page).await?.into(),
        Command::Brake {
            command: Some(BrakeCommand::Release { yes }),
            ..
        } => {
            let mut output = operator::brake::release(&ctx, yes).await?;
            publish_fill(&ctx, None, token.as_deref(), &mut output).await;
            output.into()
        }
        Command::Apply {
            file,
            dry_run,
            prune,
            token: given,
        } => {
            let (mut output, changed) = operator::apply(&ctx, &file, dry_run, prune).await?;
            if changed {
                publish_fill(&ctx, None, given.or(token).as_deref(), &mut output).await;
            }
            output.into()
        }
        Command::Export => operator::export(&ctx).await?.into(),
        Command::History { limit, pool, json } => {
            operator::history(&ctx, limit, pool.as_deref(), json)
                .await?
                .into()
        }
        Command::Dead(command) => {
            let (text, failed) = crate::dead_letters::run(&ctx, command).await?;
            Output { text, failed }
        }
    })
}

/// Applies a new target now rather than at the next event or reconcile pass.
async fn publish_fill(
    ctx: &Context,
    pool: Option<&PoolName>,
    token: Option<&str>,
    output: &mut String,
) {
    match operator::fill(ctx, pool, token).await {
        Ok(filled) => output.push_str(&filled),
        Err(error) => output.push_str(&format!(
            "(no fill published: {}; the next reconcile pass applies the target)\n",
            crate::telemetry::report(&error)
        )),
    }
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    crate::config::parse_duration(value).ok_or_else(|| {
        if value
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .trim_start_matches('0')
            .is_empty()
            && value.trim().starts_with('0')
        {
            format!("`{value}` is zero: a duration must be above zero")
        } else {
            format!("`{value}` is not a duration such as `30s`, `5m`, `1h30m` or `90` (seconds)")
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument of every (sub)command, with the command's path, that has no help text.
    fn unexplained(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "help" && id != "version" && arg.get_help().is_none() {
                missing.push(format!("{path} {id}"));
            }
        }
        for sub in command.get_subcommands() {
            unexplained(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }

    #[test]
    fn every_argument_of_every_command_says_what_it_is() {
        let mut missing = Vec::new();
        unexplained(&super::Cli::command(), "warmer", &mut missing);
        assert!(missing.is_empty(), "no --help text: {missing:?}");
    }
}
