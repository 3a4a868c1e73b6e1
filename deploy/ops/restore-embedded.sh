#!/bin/sh
# Restore a backup made by backup-embedded.sh into a data directory, with monapi stopped.
#
#   deploy/ops/restore-embedded.sh BACKUP_DIR DATA_DIR
#
# DATA_DIR must hold no store yet (move the old directory away first). Copies the stores and
# the generated secrets, checks each store with PRAGMA quick_check, and leaves out the files
# monapi makes again at start (*-wal, *-shm, the version counter, the lock files).
# Then start monapi with MONAPI_DATA_DIR=DATA_DIR (and the same MONAPI_TSDB_PATH, if set).
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 BACKUP_DIR DATA_DIR" >&2
    exit 2
fi
backup=$1
data=$2
tsdb=${MONAPI_TSDB_PATH:-$data/tsdb.sqlite3}

command -v sqlite3 >/dev/null 2>&1 || {
    echo "$0: needs the sqlite3 command (Debian: apt-get install sqlite3)" >&2
    exit 2
}
for f in "$data/monapi.db" "$tsdb"; do
    if [ -e "$f" ]; then
        echo "$0: $f exists; stop monapi and move the old data directory away first" >&2
        exit 2
    fi
done
umask 077
mkdir -p "$data" "$(dirname "$tsdb")"

restore_store() {  # NAME DST
    [ -f "$backup/$1" ] || return 0
    check=$(sqlite3 "$backup/$1" "PRAGMA quick_check")
    if [ "$check" != "ok" ]; then
        echo "$0: $backup/$1 fails PRAGMA quick_check: $check" >&2
        exit 1
    fi
    cp "$backup/$1" "$2"
    echo "restored $2"
}
restore_store monapi.db "$data/monapi.db"
restore_store tsdb.sqlite3 "$tsdb"
for name in key_pepper secret_key; do
    if [ -f "$backup/$name" ]; then
        cp -p "$backup/$name" "$data/$name"
        echo "restored $data/$name"
    fi
done
