use std::process::ExitCode;

use clap::Parser;
use warmer::Cloud;
use warmer::Config;
use warmer::Context;
use warmer::cli::{Cli, Command, PoolCommand};
use warmer::telemetry::Redactor;
use warmer::{autoscale, checkout, dev, operator, reconcile, refill, shutdown, web};

#[tokio::main]
async fn main() -> ExitCode {
    // Two TLS stacks (lapin, redis) share rustls: pick its crypto provider before either runs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    // Configuration errors name the variable, never its value.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let redactor = Redactor::new(config.secrets());
    warmer::telemetry::init(redactor.clone());
    match run(cli, config).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", redactor.redact(&format!("{error:#}")));
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<ExitCode> {
    let token = config.auth_tokens.first().map(|t| t.expose().to_string());
    let ctx = Context::new(config).await?;
    let output = match cli.command {
        Command::Checkout => {
            checkout::run(ctx, shutdown::on_signals()?).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Refill => {
            let cloud = Cloud::from_config(&ctx.config).await?;
            refill::run(ctx, cloud, shutdown::on_signals()?).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Reconcile => {
            let cloud = Cloud::from_config(&ctx.config).await?;
            reconcile::Reconciler::new(ctx, cloud)
                .run(shutdown::on_signals()?)
                .await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Web => {
            web::run(ctx, shutdown::on_signals()?).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Autoscale => {
            autoscale::Autoscaler::new(ctx)?
                .run(shutdown::on_signals()?)
                .await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Dev => {
            dev::run(ctx, shutdown::on_signals()?).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Pool(PoolCommand::List) => operator::pool_list(&ctx).await?,
        Command::Pool(PoolCommand::Set { pool, target }) => {
            let mut output = operator::pool_set(&ctx, &pool, target).await?;
            // Apply it now rather than at the next event or reconcile pass.
            match operator::fill(&ctx, Some(&pool), token.as_deref()).await {
                Ok(filled) => output.push_str(&filled),
                Err(error) => output.push_str(&format!(
                    "(no fill published: {error:#}; the next reconcile pass applies the target)\n"
                )),
            }
            output
        }
        Command::Pool(PoolCommand::Delete { pool }) => operator::pool_delete(&ctx, &pool).await?,
        Command::Fill { pool, token: given } => {
            operator::fill(&ctx, pool.as_ref(), given.or(token).as_deref()).await?
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
            let (reply, is_error) = operator::request(&ctx, &request).await?;
            println!("{reply}");
            return Ok(if is_error {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        Command::Status => operator::status(&ctx).await?,
    };
    print!("{output}");
    Ok(ExitCode::SUCCESS)
}
