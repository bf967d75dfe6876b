"""
What a process says when it starts (L{refresherd.run.build.summary}) and the
store table (L{refresherd.run.wiring}): pure, no process, no socket.
"""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

from refresherd.config import Config, load_config
from refresherd.core.outage import DEFAULT_OUTAGE_BYTES
from refresherd.entry import METADATA_MAX_BYTES
from refresherd.errors import ConfigError
from refresherd.run.build import STARTED, engine_for, parent_started, summary
from refresherd.run.settings import Setting, Settings
from refresherd.run.wiring import (
    STORES,
    describe_store,
    make_store,
    max_entry_bytes,
    outage_bytes,
    store_kind,
)
from refresherd.stores.memcached.store import MemcachedStore
from refresherd.stores.memory import MemoryStore
from refresherd.stores.near import NearCache
from refresherd.stores.redis import RedisStore

JOBS = b"""
[jobs.b]
url = "http://h/"
fresh = "1m"

[jobs.a]
url = "http://h/"
fresh = "1m"
"""


def settings_of(config: Config, store: str = "memory://") -> Settings:
    return Settings(
        config=config,
        listen=Setting("tcp:0", "--listen"),
        admin_listen=Setting("none", "--admin-listen"),
        store=Setting(store, "--store"),
        workers=1,
        log_format="text",
    )


def test_the_summary_names_the_version_file_jobs_and_store() -> None:
    config = load_config(
        "refresherd.toml",
        {},
        read_file=lambda path: JOBS,
    )
    [(text, fields)] = summary(settings_of(config, "redis://user:secret@h:6379/2?near_ttl=1"))
    assert text.format(**fields) == (
        "refresherd 0.1.0: 2 job(s) from refresherd.toml (a, b); store redis://h:6379/2"
    )


def test_no_jobs_and_no_file_are_said_with_a_warning() -> None:
    [(text, fields), (warning, _)] = summary(settings_of(Config(source="<defaults>")))
    assert text.format(**fields) == (
        "refresherd 0.1.0: 0 job(s) from no configuration file (no --config, no "
        "./refresherd.toml) (none); store memory://"
    )
    assert warning.startswith("!refresherd: no jobs are configured")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("memory://?max_bytes=10", "memory://"),
        ("redis://:env:PW@10.0.0.1:6379/0", "redis://10.0.0.1:6379/0"),
        ("rediss://app:s3cret@h:6380/1?ca=/etc/ca.pem&insecure=true", "rediss://h:6380/1"),
        ("unix://app:s3cret@/run/redis.sock?db=2", "unix:///run/redis.sock"),
        ("memcached://a:11211,b:11211?item_limit=1000", "memcached://a:11211,b:11211"),
        (
            "redis+sentinel://:pw@a:26379,b/svc/1?sentinel_password=x",
            "redis+sentinel://a:26379,b/svc/1",
        ),
    ],
)
def test_a_store_is_described_without_secrets_or_options(url: str, shown: str) -> None:
    assert describe_store(url) == shown


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("memory://", "memory"),
        ("redis://h:6379/0", "redis"),
        ("rediss://h", "redis"),
        ("unix:///run/redis.sock", "redis"),
        ("redis+sentinel://a,b/svc", "redis+sentinel"),
        ("rediss+sentinel://a/svc", "redis+sentinel"),
        ("memcached://a,b", "memcached"),
    ],
)
def test_the_kind_of_store_get_v1_status_shows(url: str, kind: str) -> None:
    assert store_kind(url) == kind


def test_a_worker_is_told_when_its_parent_started() -> None:
    assert parent_started({STARTED: "1795459543.25"}) == 1795459543.25
    for told in ({}, {STARTED: ""}, {STARTED: "soon"}, {STARTED: "nan"}, {STARTED: "-1"}):
        assert parent_started(told) is None


def test_every_scheme_has_a_store_and_an_unknown_one_is_named() -> None:
    reactor = MemoryReactorClock()
    assert sorted(STORES) == [
        "memcached",
        "memory",
        "redis",
        "redis+sentinel",
        "rediss",
        "rediss+sentinel",
        "unix",
    ]
    assert isinstance(make_store("memory://", "--store", reactor, "rfd", {}), MemoryStore)
    assert isinstance(make_store("redis://127.0.0.1:1/0", "--store", reactor, "rfd", {}), NearCache)
    tls = make_store(
        "rediss://h:1/0?near_ttl=0&outage_bytes=0&insecure=true", "--store", reactor, "rfd", {}
    )
    assert isinstance(tls, RedisStore) and tls.endpoint is not None
    unix = make_store("unix:///run/r.sock?near_ttl=0.5&db=2", "--store", reactor, "rfd", {})
    assert isinstance(unix, NearCache)
    with pytest.raises(ConfigError, match=r"^--store: the rediss store URL takes no option 'x'"):
        make_store("rediss://h:1/0?near_ttl=0&x=1", "--store", reactor, "rfd", {})
    sentinel = make_store("redis+sentinel://h1,h2/svc/0?near_ttl=0", "--store", reactor, "rfd", {})
    assert isinstance(sentinel, RedisStore) and sentinel.endpoint is not None
    secure = make_store(
        "rediss+sentinel://h1/svc?near_ttl=0&server_name=r.example&insecure=true",
        "--store",
        reactor,
        "rfd",
        {},
    )
    assert isinstance(secure, RedisStore) and secure.warning is not None
    with pytest.raises(ConfigError, match=r"^--store: the redis\+sentinel store URL needs the "):
        make_store("redis+sentinel://h1?outage_bytes=0", "--store", reactor, "rfd", {})
    with pytest.raises(ConfigError, match=r"^--store: unknown store 'couch'; use memory://, "):
        make_store("couch://x", "--store", reactor, "rfd", {})


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("redis://127.0.0.1:1/0", DEFAULT_OUTAGE_BYTES),
        ("redis://127.0.0.1:1/0?outage_bytes=1000&near_ttl=0.5", 1000),
        ("memcached://127.0.0.1:1?outage_bytes=0", 0),
        ("memory://", 0),
    ],
)
def test_outage_bytes_is_a_store_url_option_of_shared_stores(url: str, kept: int) -> None:
    make_store(url, "--store", MemoryReactorClock(), "rfd", {})  # accepted, not passed on
    assert outage_bytes(url) == kept


@pytest.mark.parametrize("value", ["-1", "lots", "1e6", "12345678901234567", ""])
def test_outage_bytes_must_be_a_number_of_bytes(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^--store: outage_bytes must be a number of bytes"):
        make_store(
            f"redis://127.0.0.1:1/0?outage_bytes={value}",
            "--store",
            MemoryReactorClock(),
            "rfd",
            {},
        )


def test_a_shared_store_reads_entries_up_to_the_largest_value_of_any_job() -> None:
    """Anything larger was not written by a process of this configuration."""
    text = JOBS + b'max_value_bytes = 5000000\n[jobs.c]\nurl = "http://h/"\nfresh = "1m"\n'
    config = load_config("refresherd.toml", {}, read_file=lambda path: text)
    largest = METADATA_MAX_BYTES + 1 + 32 * 1024 * 1024  # job b's default
    assert max_entry_bytes(config.jobs) == largest
    assert max_entry_bytes({}) == METADATA_MAX_BYTES + 1
    reactor = MemoryReactorClock()
    redis = engine_for(settings_of(config, "redis://h:1/0?near_ttl=0"), reactor, {})
    assert isinstance(redis.refresher.store, RedisStore)
    assert redis.refresher.store.max_entry_bytes == largest
    memcached = engine_for(settings_of(config, "memcached://h:1"), reactor, {})
    assert isinstance(memcached.refresher.store, MemcachedStore)
    assert memcached.refresher.store.max_entry_bytes == largest


def test_an_engine_warms_only_when_asked_and_a_job_has_a_warm_list() -> None:
    """A single process and the parent of --workers warm; a worker does not (its parent does)."""
    warm = JOBS + b"warm = [{}]\n"
    reactor = MemoryReactorClock()
    config = load_config("refresherd.toml", {}, read_file=lambda path: warm)
    engine = engine_for(settings_of(config), reactor, {})
    assert engine.warmer is not None and [k.target.key for k in engine.warmer.keys] == ["rfd:a:v1:"]
    assert engine.warmer.parent is engine
    assert engine_for(settings_of(config), reactor, {}, warm=False).warmer is None
    plain = load_config("refresherd.toml", {}, read_file=lambda path: JOBS)
    assert engine_for(settings_of(plain), reactor, {}).warmer is None
