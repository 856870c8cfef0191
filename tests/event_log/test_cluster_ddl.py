"""The event log's cluster DDL (``TAILOR_EVENT_LOG_CLUSTER``): its text, checked statement by
statement (no ClickHouse cluster runs where the tests do; chdb has no ``remote_servers``)."""

from __future__ import annotations

import msgspec
import pytest

from decision_api.settings import Settings
from event_log.sql import MIGRATIONS, cluster_migration, cluster_migrations
from event_log.store import open_event_log

TABLES = ("exposures", "outcomes", "audit")


def test_every_table_is_replicated_locally_and_distributed_by_its_key() -> None:
    """Each migration creates ``<t>_local`` (ReplicatedReplacingMergeTree in the shard's Keeper
    path, token deduplication window kept) then ``<t>`` (Distributed over it), ON CLUSTER."""
    ddl = dict(cluster_migrations("prod_ch", "shop"))
    assert sorted(ddl) == [version for version, _ in MIGRATIONS]
    keys = {"exposures": "cityHash64(unit_id)", "outcomes": "cityHash64(unit_id)",
            "audit": "cityHash64(event_id)"}  # fmt: skip
    for version, table in zip((1, 2, 3), TABLES, strict=True):
        local, distributed = ddl[version]
        head = f"CREATE TABLE IF NOT EXISTS shop.{table}_local ON CLUSTER prod_ch ("
        assert local.startswith(head)
        assert (
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/shop/"
            f"{table}_local', '{{replica}}')"
        ) in local
        assert "SETTINGS replicated_deduplication_window = 10000" in local
        assert "non_replicated" not in local
        assert distributed == (
            f"CREATE TABLE IF NOT EXISTS shop.{table} ON CLUSTER prod_ch AS shop.{table}_local\n"
            f"ENGINE = Distributed(prod_ch, shop, {table}_local, {keys[table]})"
        )
    # The columns, partitioning and sort order are the single-node table's.
    single = dict(MIGRATIONS)[1]
    assert single[single.index("event_id UUID") : single.index(") ENGINE")] in ddl[1][0]
    assert "PARTITION BY toYYYYMM(ts)\nORDER BY (experiment, unit_id, event_id)" in ddl[1][0]


def test_a_column_change_alters_the_local_and_the_distributed_table() -> None:
    """A later ``ALTER TABLE ... ADD COLUMN`` migration runs on both tables, ON CLUSTER."""
    statement = "ALTER TABLE exposures ADD COLUMN IF NOT EXISTS region LowCardinality(String)"
    assert cluster_migration(9, statement, "c", "tailor") == (
        "ALTER TABLE tailor.exposures_local ON CLUSTER c ADD COLUMN IF NOT EXISTS region "
        "LowCardinality(String)",
        "ALTER TABLE tailor.exposures ON CLUSTER c ADD COLUMN IF NOT EXISTS region "
        "LowCardinality(String)",
    )


@pytest.mark.parametrize(
    ("statement", "cluster", "database", "match"),
    [
        ("ALTER TABLE exposures DELETE WHERE 1", "c", "tailor", "migration 7 has no cluster form"),
        ("CREATE TABLE IF NOT EXISTS x (a UInt8) ENGINE = ReplacingMergeTree\nORDER BY a",
         "c; DROP", "tailor", "cluster name"),
        ("CREATE TABLE IF NOT EXISTS x (a UInt8) ENGINE = ReplacingMergeTree\nORDER BY a",
         "c", "ta-ilor", "database name"),
    ],
)  # fmt: skip
def test_statements_without_a_cluster_form_and_bad_names_are_refused(
    statement: str, cluster: str, database: str, match: str
) -> None:
    """A migration kind the rewrite does not know, or a name that is not an identifier, raises."""
    with pytest.raises(ValueError, match=match):
        cluster_migration(7, statement, cluster, database)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"TAILOR_EVENT_LOG_CLUSTER": "prod"}, r"needs an http\(s\):// event_log.url"),
        ({"TAILOR_EVENT_LOG_CLUSTER": "a-b", "TAILOR_EVENT_LOG_URL": "http://h:8123/t"},
         r"\$.event_log.cluster"),
    ],
)  # fmt: skip
def test_cluster_setting_is_validated(env: dict[str, str], match: str) -> None:
    """A cluster with the embedded chdb, or a name that is not an identifier, is a bad config."""
    with pytest.raises(msgspec.ValidationError, match=match):
        Settings.from_env(env)


def test_a_cluster_on_chdb_is_refused_when_opening() -> None:
    """``open_event_log`` refuses a cluster for chdb, before touching any directory."""
    with pytest.raises(ValueError, match="needs a ClickHouse server"):
        open_event_log("chdb:///nonexistent/tailor-cluster-test", cluster="prod")
