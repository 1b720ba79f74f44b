//! `onlyone`: parse flags, run, map the result to an exit code.

mod cli;
mod logger;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() { cli::EXIT_USAGE } else { 0 });
        }
    };
    let (level, format) = cli.log_settings();
    logger::init(level, format);
    match cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let mut message = format!("onlyone: error: {err}");
            for cause in err.chain().skip(1) {
                // Messages that already quote their cause need it once.
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    message.push_str(&format!(": {cause}"));
                }
            }
            eprintln!("{message}");
            let code = err
                .downcast_ref::<onlyone::Error>()
                .map_or(1, onlyone::Error::exit_code);
            ExitCode::from(code)
        }
    }
}
