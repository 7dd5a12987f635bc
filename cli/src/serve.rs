//! `serve`: builds the runtime's [`Settings`](tokenizer_auth_effects::settings::Settings)
//! from the configuration and runs the chosen runtime until it stops.

use tokenizer_auth_effects::mail::{MailConfig, SmtpSecurity};
use tokenizer_auth_effects::tls::TlsConfig;

use super::Failure;
use super::config::{Configuration, Runtime};

pub(super) fn run(config: &Configuration) -> Result<(), Failure> {
    config.check_mail().map_err(Failure::Usage)?;
    let mut settings = config.settings();
    // A certificate that cannot serve, or secrets in the clear off this
    // machine, are configuration errors: said before anything binds.
    if let Some(files) = config.tls_files() {
        settings.tls = Some(TlsConfig::load(files).map_err(|e| Failure::Usage(e.to_string()))?);
    }
    settings.check_exposure().map_err(Failure::Usage)?;
    // A capture is never overwritten. Said before anything starts or binds,
    // as a usage error, rather than by the runtime once it is listening.
    if let Some(path) = &settings.capture
        && std::fs::symlink_metadata(path).is_ok()
    {
        return Err(Failure::Usage(format!(
            "the capture file {} already exists: a capture is never overwritten; name a new file",
            path.display()
        )));
    }
    let mail = match &settings.mail {
        MailConfig::Outbox { dir } => format!("outbox {}", dir.display()),
        MailConfig::Smtp(relay) => {
            let security = match relay.security {
                SmtpSecurity::Tls => "tls",
                SmtpSecurity::StartTls => "starttls",
                SmtpSecurity::Plain => "plain",
            };
            let user = relay.credentials.as_ref().map_or("no auth".to_owned(), |(user, _)| format!("as {user}"));
            format!("relay {}:{} ({security}, {user})", relay.host, relay.port)
        }
    };
    let runtime = config.runtime();
    tracing::info!(
        runtime = match runtime {
            Runtime::Mio => "mio",
            Runtime::Std => "std",
        },
        data_dir = %settings.data_dir.display(),
        mail = %mail,
        tls = settings.tls.is_some(),
        "starting"
    );
    let served = match runtime {
        Runtime::Mio => tokenizer_auth_runtime_mio::server::serve(settings),
        Runtime::Std => tokenizer_auth_runtime_std::server::serve(settings),
    };
    served.map_err(|e| Failure::Other(e.to_string()))
}
