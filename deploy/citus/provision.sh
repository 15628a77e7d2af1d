#!/usr/bin/env bash
# Prepares a Citus cluster for the loyalty suite: every service database on every node, with the
# extension; the coordinator and the workers registered in each database. Run once per cluster, and
# again (idempotently) after adding a worker. Then run the migrations against the coordinator
# (`python -m services.migrate`, the compose migrate job / the Kubernetes Job): they create the tables
# and place them (deploy/citus/<service>.sql) in the same transaction, so a database is never partly
# distributed. See README.md beside this file.
#
#   COORDINATOR=citus-coordinator WORKERS="citus-worker-1 citus-worker-2" PGUSER=postgres \
#     deploy/citus/provision.sh
set -euo pipefail

: "${COORDINATOR:?the coordinator's host name, as the workers reach it}"
: "${WORKERS:?the workers' host names, space-separated}"
PGPORT="${PGPORT:-5432}"
PGUSER="${PGUSER:-postgres}"
OWNER="${OWNER:-loyalty}"  # the role the services connect as (DATABASE_URL)
DATABASES="${DATABASES:-loyalty_points loyalty_metrics loyalty_segmentation loyalty_cycle_delivery}"

on() {  # on HOST DATABASE SQL: one statement on one node, stopping at the first error
    psql -v ON_ERROR_STOP=1 -X -q -h "$1" -p "$PGPORT" -U "$PGUSER" -d "$2" -c "$3"
}

for node in "$COORDINATOR" $WORKERS; do
    for database in $DATABASES; do
        if [ -z "$(psql -X -tA -h "$node" -p "$PGPORT" -U "$PGUSER" -d postgres \
            -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" ]; then
            on "$node" postgres "CREATE DATABASE \"$database\" OWNER \"$OWNER\""
        fi
        on "$node" "$database" "CREATE EXTENSION IF NOT EXISTS citus"
    done
done

for database in $DATABASES; do
    # The coordinator holds the outbox (a Citus local table): it must be in the cluster's metadata.
    on "$COORDINATOR" "$database" "SELECT citus_set_coordinator_host('$COORDINATOR', $PGPORT)"
    for worker in $WORKERS; do
        on "$COORDINATOR" "$database" \
            "SELECT citus_add_node('$worker', $PGPORT) WHERE NOT EXISTS (SELECT FROM pg_dist_node WHERE nodename = '$worker' AND nodeport = $PGPORT)"
    done
done
echo "provisioned $DATABASES on $COORDINATOR and $WORKERS; now run the migrations against $COORDINATOR"
