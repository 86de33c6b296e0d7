#!/bin/sh
# The real peers the tests talk to, on Debian: `make test` runs `deploy/peers.sh ensure`.
#
#   ensure   all there: nothing. Missing, as root: installs them (as `install`). Missing,
#            not root: one line naming the Debian packages and the command, exit status 1.
#   install  apt-get install what is missing; a PostgreSQL this run installed is started,
#            given the `test` database and trusts user postgres on 127.0.0.1 (tests only).
#   missing  the missing Debian packages, on one line.
#
# PostgreSQL: the tests use FRACTURE_TRIAGE_TEST_POSTGRES
# (default postgresql://postgres@127.0.0.1:5432/test).
set -eu

POSTGRES_URL=${FRACTURE_TRIAGE_TEST_POSTGRES:-postgresql://postgres@127.0.0.1:5432/test}
ORTHANC_PLUGINS=${ORTHANC_PLUGINS:-/usr/share/orthanc/plugins}

# "binary-or-file package" pairs: what a test runs, and the Debian package that brings it.
PEERS="storescu:dcmtk storescp:dcmtk Orthanc:orthanc
$ORTHANC_PLUGINS/libOrthancDicomWeb.so:orthanc-dicomweb
$ORTHANC_PLUGINS/libOrthancWebViewer.so:orthanc-webviewer
dciodvfy:dicom3tools docker-compose:docker-compose chromium:chromium
chromedriver:chromium-driver psql:postgresql-client pg_ctlcluster:postgresql"

missing_packages() {
    missing=""
    for peer in $PEERS; do
        thing=${peer%%:*}
        package=${peer##*:}
        case $thing in
            /*) test -e "$thing" && continue ;;
            *) command -v "$thing" >/dev/null 2>&1 && continue ;;
        esac
        case " $missing " in *" $package "*) ;; *) missing="$missing $package" ;; esac
    done
    echo "${missing# }"
}

postgres_reachable() {
    command -v psql >/dev/null 2>&1 &&
        PGCONNECT_TIMEOUT=5 psql "$POSTGRES_URL" -Atqc "SELECT 1" >/dev/null 2>&1
}

setup_fresh_postgres() {
    # Only a cluster this very run installed: a PostgreSQL that was already here is the
    # site's, and its authentication is left as it is.
    version=$(ls /etc/postgresql | sort -n | tail -1)
    hba=/etc/postgresql/$version/main/pg_hba.conf
    sed -i '1i host all postgres 127.0.0.1/32 trust  # fracture-triage tests (deploy/peers.sh)' "$hba"
    pg_ctlcluster "$version" main start 2>/dev/null || pg_ctlcluster "$version" main reload
    runuser -u postgres -- createdb test 2>/dev/null || true
    echo "deploy/peers.sh: PostgreSQL $version started; it trusts user postgres on 127.0.0.1 (tests only)"
}

install() {
    missing=$(missing_packages)
    if [ -n "$missing" ]; then
        fresh_postgres=no
        case " $missing " in *" postgresql "*) fresh_postgres=yes ;; esac
        apt-get update -qq
        # shellcheck disable=SC2086 # one word per package
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
        if [ "$fresh_postgres" = yes ]; then
            setup_fresh_postgres
        fi
    fi
}

case ${1:-ensure} in
    missing)
        missing_packages
        ;;
    install)
        install
        ;;
    ensure)
        missing=$(missing_packages)
        if [ -n "$missing" ]; then
            if [ "$(id -u)" = 0 ]; then
                install
            else
                echo "make test: missing test peers (Debian packages): $missing; install them with: sudo make peers" >&2
                exit 1
            fi
        fi
        if ! postgres_reachable; then
            where=$(echo "$POSTGRES_URL" | sed 's#://\([^:/@]*\):[^@]*@#://\1:***@#')
            echo "make test: PostgreSQL not reachable at $where; start it, or set FRACTURE_TRIAGE_TEST_POSTGRES" >&2
            exit 1
        fi
        ;;
    *)
        echo "usage: deploy/peers.sh [ensure|install|missing]" >&2
        exit 2
        ;;
esac
