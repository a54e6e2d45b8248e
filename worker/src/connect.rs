//! Connections: Temporal through its standard client configuration (`TEMPORAL_ADDRESS`,
//! `TEMPORAL_NAMESPACE`, `TEMPORAL_PROFILE`, the config file), the store through
//! `RETAKE_DATABASE_URL`.

use anyhow::Context;
use retake_activities::ports::Store;
use retake_activities::store::StoreOptions;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use temporalio_client::envconfig::LoadClientConfigProfileOptions;
use temporalio_client::{
    Client, ClientOptions, Connection, GrpcCompression, NamespacedClient, tonic,
};
use temporalio_protos::protos::temporal::api::enums::v1::IndexedValueType;
use temporalio_protos::protos::temporal::api::operatorservice::v1::{
    AddSearchAttributesRequest, ListSearchAttributesRequest,
};

/// How the gRPC messages between a client or worker and Temporal are compressed
/// (`--grpc-compression`).
///
/// `none` by default, where the Temporal SDK's own default is gzip: retake's messages are small
/// (a segment's parameters and scores, histories of a few dozen events), and compressing each
/// costs CPU on both ends (a worker at full load spent 7 % of its CPU inside gzip in a `perf`
/// profile, and about 15 % less CPU per retry without it; `docs/benchmarks.md`) to save bytes
/// that matter only on a slow or metered link. Choose `gzip` for such a link, e.g. to a
/// Temporal server in another region.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Send messages as they are, and ask for responses the same way.
    #[default]
    None,
    /// Gzip every request and accept gzipped responses (the SDK's default).
    Gzip,
}

impl From<Compression> for GrpcCompression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => GrpcCompression::None,
            Compression::Gzip => GrpcCompression::Gzip,
        }
    }
}

/// Connect to Temporal as the command line says: `--temporal-address` and
/// `--grpc-compression`.
pub async fn temporal_for(g: &crate::cli::Global) -> anyhow::Result<Client> {
    temporal_with(g.temporal_address.as_deref(), g.grpc_compression).await
}

/// Connect to Temporal. `address` (e.g. from `--temporal-address`) overrides the configuration.
pub async fn temporal(address: Option<&str>) -> anyhow::Result<Client> {
    temporal_with(address, Compression::default()).await
}

/// [`temporal`] with the messages compressed as `compression` says.
async fn temporal_with(address: Option<&str>, compression: Compression) -> anyhow::Result<Client> {
    let (mut conn_opts, client_opts) =
        ClientOptions::load_from_config(LoadClientConfigProfileOptions::default())
            .map_err(|e| anyhow::anyhow!("reading the Temporal client configuration: {e}"))?;
    if let Some(addr) = address {
        let with_scheme = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        conn_opts.target = with_scheme
            .parse()
            .with_context(|| format!("invalid Temporal address {addr:?}"))?;
    }
    conn_opts.grpc_compression = compression.into();
    let target = conn_opts.target.to_string();
    let connection = Connection::connect(conn_opts).await.with_context(|| {
        format!("connecting to Temporal at {target} (is the server running? set TEMPORAL_ADDRESS)")
    })?;
    Client::new(connection, client_opts).context("creating the Temporal client")
}

/// How long a call of `retake api` waits for a database connection before it fails, and the API
/// answers `503` with `Retry-After`.
///
/// A worker's store steps wait the store's default (30 s): a step that fails is retried by
/// Temporal anyway, and a short wait would fail them spuriously whenever the pool is busy. An
/// HTTP client, though, should hear "unavailable, retry later" at once rather than hang: with
/// the worker's wait, every API call blocked 30 s while Postgres refused connections. A second
/// is still far longer than a query of the API takes, or than opening a connection to a
/// server that is up.
pub const API_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// Open the store (`postgres://...`, `sqlite://PATH` or a file path), creating a SQLite file's
/// parent directory when needed.
pub async fn store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    store_with(url, StoreOptions::default()).await
}

/// Open the store as `retake api` does: [`store`] whose calls wait [`API_ACQUIRE_TIMEOUT`] for a
/// connection (connecting still waits for the first one as long as a worker does).
pub async fn api_store(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    store_with(
        url,
        StoreOptions::default().acquire_timeout(API_ACQUIRE_TIMEOUT),
    )
    .await
}

/// [`store`] with the waits of `options`.
pub async fn store_with(url: &str, options: StoreOptions) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    retake_activities::store::connect_any_with(url, options)
        .await
        .with_context(|| format!("opening the store at {}", redact(url)))
}

/// Make sure the workflow's custom search attributes exist on the namespace, registering missing
/// ones. Without them a workflow that upserts them would fail every workflow task and stick, so a
/// worker refuses to start when they are missing and cannot be registered.
pub async fn ensure_search_attributes(client: &Client) -> anyhow::Result<()> {
    let namespace = client.namespace();
    let mut operator = client.connection().operator_service();
    let existing = operator
        .list_search_attributes(tonic::Request::new(ListSearchAttributesRequest {
            namespace: namespace.clone(),
        }))
        .await
        .with_context(|| format!("listing the search attributes of namespace {namespace}"))?
        .into_inner()
        .custom_attributes;
    let missing: std::collections::HashMap<String, i32> = retake_workflows::SEARCH_ATTRIBUTES
        .iter()
        .filter(|name| !existing.contains_key(**name))
        .map(|name| ((*name).to_owned(), IndexedValueType::Keyword as i32))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut names: Vec<&str> = missing.keys().map(String::as_str).collect();
    names.sort_unstable();
    tracing::info!(?names, %namespace, "registering search attributes");
    operator
        .add_search_attributes(tonic::Request::new(AddSearchAttributesRequest {
            search_attributes: missing.clone(),
            namespace: namespace.clone(),
        }))
        .await
        .map_err(|e| {
            let cmds: Vec<String> = names
                .iter()
                .map(|n| format!("temporal operator search-attribute create --namespace {namespace} --name {n} --type Keyword"))
                .collect();
            anyhow::anyhow!(
                "namespace {namespace} lacks the search attributes {} and registering them failed ({}); \
                 an operator can register them with:\n  {}",
                names.join(", "),
                e.message(),
                cmds.join("\n  ")
            )
        })?;
    Ok(())
}

/// `url` without its password, for messages and logs.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}
