#!/bin/sh
# Back up monapi's embedded stores while monapi runs.
#
#   deploy/ops/backup-embedded.sh DATA_DIR DEST_DIR
#
# DATA_DIR is MONAPI_DATA_DIR; DEST_DIR must not exist yet. Copies, each as one consistent
# snapshot taken with SQLite's VACUUM INTO (one read transaction: monapi keeps writing
# meanwhile), the configuration store DATA_DIR/monapi.db and the time-series store
# (MONAPI_TSDB_PATH, default DATA_DIR/tsdb.sqlite3), then the generated secrets key_pepper and
# secret_key, without which the API keys in the copy never authenticate again. A file that is
# not there (PostgreSQL, InfluxDB or VictoriaMetrics in use) is skipped with a note.
# Run it as the user monapi runs as: SQLite may create DATA_DIR/*-shm files, which monapi must
# be able to open afterwards. Needs sqlite3 3.27 or newer (Debian: apt-get install sqlite3).
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 DATA_DIR DEST_DIR" >&2
    exit 2
fi
data=$1
dest=$2
tsdb=${MONAPI_TSDB_PATH:-$data/tsdb.sqlite3}

command -v sqlite3 >/dev/null 2>&1 || {
    echo "$0: needs the sqlite3 command (Debian: apt-get install sqlite3)" >&2
    exit 2
}
case "$dest$tsdb$data" in
*"'"*) echo "$0: paths with a single quote are not supported" >&2; exit 2 ;;
esac
if [ -e "$dest" ]; then
    echo "$0: $dest exists; give a new directory" >&2
    exit 2
fi
umask 077
mkdir -p "$dest"

copied=0
copy_store() {  # SRC NAME
    if [ ! -f "$1" ]; then
        echo "skipped $1 (not there: that store is not the embedded one)"
        return 0
    fi
    sqlite3 "$1" "VACUUM INTO '$dest/$2'"
    check=$(sqlite3 "$dest/$2" "PRAGMA quick_check")
    if [ "$check" != "ok" ]; then
        echo "$0: the copy $dest/$2 fails PRAGMA quick_check: $check" >&2
        exit 1
    fi
    echo "copied $1 -> $dest/$2 ($(wc -c <"$dest/$2") bytes)"
    copied=$((copied + 1))
}
copy_store "$data/monapi.db" monapi.db
copy_store "$tsdb" tsdb.sqlite3
if [ "$copied" -eq 0 ]; then
    echo "$0: no embedded store in $data" >&2
    exit 1
fi

for name in key_pepper secret_key; do
    if [ -f "$data/$name" ]; then
        cp -p "$data/$name" "$dest/$name"
        echo "copied $data/$name"
    else
        upper=$(echo "$name" | tr 'a-z' 'A-Z')
        echo "no $data/$name: MONAPI_$upper is set in the environment; keep its value with this backup"
    fi
done
