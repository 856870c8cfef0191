"""Settings from the environment: sections, derived paths, client variables, errors."""

from __future__ import annotations

import msgspec
import pytest

from decision_api.settings import Settings


def test_sections_and_derived_paths() -> None:
    """The first word after TAILOR_ names the section; chdb and the spool follow the data dir."""
    s = Settings.from_env(
        {
            "TAILOR_DATA_DIR": "/srv/tailor/",
            "TAILOR_REDIS_URL": "redis://r:6379/2",
            "TAILOR_EVENT_LOG_BATCH_SIZE": "500",
            "TAILOR_LEARNER_IN_PROCESS": "false",
            "TAILOR_API_URL": "http://ignored",  # read by clients, not the server
        }
    )
    assert s.redis.url == "redis://r:6379/2"
    assert s.event_log.batch_size == 500
    assert s.learner.in_process is False
    assert s.event_log.url == "chdb:///srv/tailor/chdb"
    assert s.event_log.spool_dir == "/srv/tailor/spool"


def test_explicit_event_log_wins() -> None:
    """An explicit TAILOR_EVENT_LOG_URL is kept as given."""
    s = Settings.from_env({"TAILOR_EVENT_LOG_URL": "http://u:p@ch:8123/db"})
    assert s.event_log.url == "http://u:p@ch:8123/db"
    assert s.event_log.spool_dir == "./data/spool"


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"TAILOR_PORT": "http"}, r"\$\.port"),
        ({"TAILOR_EVENT_LOG_BATCH_SIZE": "0"}, r"\$\.event_log\.batch_size"),
        ({"TAILOR_NO_SUCH_THING": "1"}, "no_such_thing"),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], match: str) -> None:
    """A badly typed or unknown variable fails naming the setting."""
    with pytest.raises(msgspec.ValidationError, match=match):
        Settings.from_env(environ)
