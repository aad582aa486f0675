"""Run a single-node Apache Kafka broker on 127.0.0.1 for development and tests.

The broker runs in KRaft combined mode (broker and controller in one JVM). Its jars
are resolved from Maven Central with ``mvn`` into a cache folder on first use, so a
JDK (17 or newer for Kafka 4.x) and Apache Maven are the only system requirements.
Process groups and signals make this POSIX only (Linux, macOS).

Python API::

    with LocalKafka(port=find_free_port()) as broker:
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers})

Command line::

    python -m deploy.kafka_local start [--version 4.4.0] [--port 9092]
    python -m deploy.kafka_local status
    python -m deploy.kafka_local stop
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

logger = logging.getLogger(__name__)

DEFAULT_KAFKA_VERSION = "4.4.0"
DEFAULT_PORT = 9092
DEFAULT_HEAP = "512m"
INITIAL_HEAP = "256m"
DEFAULT_START_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 20.0
LOG_TAIL_LINES = 40
HOST = "127.0.0.1"

CACHE_ENV = "STREAM_DETECTOR_KAFKA_CACHE"
HEAP_ENV = "STREAM_DETECTOR_KAFKA_HEAP"

# Kafka 3.x logs through SLF4J to log4j 1, so it gets reload4j, the maintained fork
# of log4j 1.2. 1.2.27 was the newest reload4j release on Maven Central in 2026-12.
RELOAD4J_VERSION = "1.2.27"
MAVEN_TIMEOUT_S = 900.0
STORAGE_FORMAT_TIMEOUT_S = 120.0
LIB_MARKER = ".complete"
STATE_FILE = "broker.json"
PID_FILE = "broker.pid"
NODE_ID = 1

# Keys that LocalKafka sets itself. Overriding them could bind another address,
# break the single-node quorum or write outside data_dir.
RESERVED_KEYS = frozenset(
    {
        "process.roles",
        "node.id",
        "listeners",
        "advertised.listeners",
        "listener.security.protocol.map",
        "controller.listener.names",
        "inter.broker.listener.name",
        "controller.quorum.voters",
        "controller.quorum.bootstrap.servers",
        "log.dir",
        "log.dirs",
        "metadata.log.dir",
    }
)


class BrokerError(Exception):
    """Base class for errors of the local Kafka launcher."""


class JavaNotFoundError(BrokerError):
    """No usable ``java`` executable was found, or it is too old."""


class MavenNotFoundError(BrokerError):
    """The ``mvn`` executable needed to resolve the Kafka jars was not found."""


class ResolveError(BrokerError):
    """Maven failed to resolve the Kafka jars."""


class PortInUseError(BrokerError):
    """A port that the broker needs is already in use on 127.0.0.1.

    ``role`` is ``"broker"`` for the client port and ``"controller"`` for the
    KRaft controller port.
    """

    def __init__(self, port: int, role: str, detail: str = "") -> None:
        self.port = port
        self.role = role
        message = (
            f"{role} port {port} on {HOST} is already in use. Stop the program that "
            f"listens there or choose another port."
        )
        super().__init__(message + detail)


class BrokerStartError(BrokerError):
    """The broker exited or did not become ready while starting.

    ``exit_code`` is None when the broker was still running (a timeout).
    ``log_tail`` contains the last lines of the broker log.
    """

    def __init__(self, message: str, exit_code: int | None, log_tail: str) -> None:
        self.exit_code = exit_code
        self.log_tail = log_tail
        super().__init__(message)


class BrokerUnreachableError(BrokerError):
    """A Kafka client could not fetch cluster metadata from a bootstrap address."""


@dataclasses.dataclass(frozen=True)
class BrokerState:
    """Facts about a started broker, stored as JSON in its data dir."""

    pid: int
    version: str
    port: int
    controller_port: int
    cluster_id: str
    started_at: float

    @property
    def bootstrap_servers(self) -> str:
        """Bootstrap address for Kafka clients."""
        return f"{HOST}:{self.port}"


# ---------------------------------------------------------------------------
# Defaults and small helpers


def default_cache_dir() -> Path:
    """Return the jar cache root: $STREAM_DETECTOR_KAFKA_CACHE or ~/.cache/stream-detector/kafka."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "stream-detector" / "kafka"


def default_data_dir() -> Path:
    """Return the data dir that the CLI uses when --data-dir is not given."""
    return Path.home() / ".cache" / "stream-detector" / "broker"


def default_heap() -> str:
    """Return the maximum heap size: $STREAM_DETECTOR_KAFKA_HEAP or DEFAULT_HEAP."""
    return os.environ.get(HEAP_ENV) or DEFAULT_HEAP


def find_free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports that are free on 127.0.0.1 right now.

    All sockets stay open until every port is chosen, so the ports differ. Another
    process can still take a port before the caller binds it.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def find_free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    return find_free_ports(1)[0]


def is_port_free(port: int) -> bool:
    """Return whether a listening socket could bind ``port`` on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The JDK enables SO_REUSEADDR on server sockets on Linux and macOS, so a port
        # with connections in TIME_WAIT is free for the broker too.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def kafka_major_version(version: str) -> int:
    """Return the major version of a Kafka release such as ``"4.4.0"``.

    Raises:
        ValueError: the version does not look like MAJOR.MINOR.PATCH.
    """
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"invalid Kafka version {version!r}: expected MAJOR.MINOR.PATCH, such as 4.4.0")
    return int(match.group(1))


def _heap_megabytes(size: str) -> int:
    """Convert a JVM size such as 512m or 1g to MiB."""
    match = re.fullmatch(r"(\d+)([kKmMgG])", size)
    if match is None:
        raise ValueError(f"invalid heap size {size!r}: expected a number with unit k, m or g, such as 512m or 1g")
    factor = {"k": 1 / 1024, "m": 1, "g": 1024}[match.group(2).lower()]
    return int(int(match.group(1)) * factor)


def tail_lines(path: Path, count: int = LOG_TAIL_LINES) -> str:
    """Return the last ``count`` lines of a text file, or "" if it does not exist."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 256 * 1024))
            text = file.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-count:])


def first_error(path: Path, max_lines: int = 6) -> str:
    """Return the first ERROR or FATAL record of a Kafka log file without its stack frames, or "".

    A broker that fails at start logs the cause first and then many lines of
    shutdown, so the tail of the log alone rarely shows the cause.
    """
    try:
        with path.open(encoding="utf-8", errors="replace") as file:
            lines = iter(file)
            for line in lines:
                if _LOG_ERROR_RECORD.match(line):
                    return _error_record(line, lines, max_lines)
    except FileNotFoundError:
        pass
    return ""


_LOG_RECORD = re.compile(r"\[\d{4}-\d\d-\d\d [^]]*\] ")
_LOG_ERROR_RECORD = re.compile(r"\[\d{4}-\d\d-\d\d [^]]*\] (ERROR|FATAL) ")


def _error_record(header: str, following: Iterator[str], max_lines: int) -> str:
    record = [header.rstrip()]
    for line in following:
        if len(record) >= max_lines or _LOG_RECORD.match(line):
            break
        if not line.lstrip().startswith("at "):
            record.append(line.rstrip())
    return "\n".join(record)


# ---------------------------------------------------------------------------
# Resolving the Kafka jars from Maven Central


def resolve_kafka(version: str, cache_dir: Path | None = None) -> Path:
    """Download the broker jars of Kafka ``version`` with Maven, unless cached.

    The jars go to ``<cache_dir>/<version>/lib``. A marker file written after a
    complete download makes later calls skip Maven.

    Args:
        version: Kafka release, such as "4.4.0".
        cache_dir: cache root, or ``default_cache_dir()`` when None.

    Returns:
        The lib folder, for use as a ``lib/*`` class path.

    Raises:
        MavenNotFoundError: ``mvn`` is not on PATH.
        ResolveError: Maven failed, for example for a version that does not exist.
    """
    kafka_major_version(version)
    root = (cache_dir or default_cache_dir()) / version
    lib_dir = root / "lib"
    if _is_lib_complete(lib_dir):
        return lib_dir

    mvn = shutil.which("mvn")
    if mvn is None:
        raise MavenNotFoundError(
            "mvn not found on PATH: it is needed once to download the Kafka jars from Maven Central. "
            "Install Apache Maven 3.6 or newer (for example `apt-get install maven`)."
        )

    logger.info("resolving Kafka %s from Maven Central into %s ...", version, lib_dir)
    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="lib-staging-", dir=root))
    try:
        _copy_dependencies(mvn, [("org.apache.kafka", "kafka_2.13", version)], staging, transitive=True)
        _copy_dependencies(mvn, _logging_binding(version, staging), staging, transitive=False)
        jars = sorted(path.name for path in staging.glob("*.jar"))
        (staging / LIB_MARKER).write_text("\n".join(jars) + "\n")
        _publish_lib(staging, lib_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not any(root.iterdir()):
            root.rmdir()
    logger.info("resolved Kafka %s in %.0f s", version, time.monotonic() - started)
    return lib_dir


def _is_lib_complete(lib_dir: Path) -> bool:
    marker = lib_dir / LIB_MARKER
    if not marker.is_file():
        return False
    names = marker.read_text().split()
    return bool(names) and all((lib_dir / name).is_file() for name in names)


def _publish_lib(staging: Path, lib_dir: Path) -> None:
    """Move a complete staging folder to ``lib_dir`` with one rename."""
    if lib_dir.exists() and not _is_lib_complete(lib_dir):
        shutil.rmtree(lib_dir)
    try:
        staging.rename(lib_dir)
    except OSError:
        # Another process finished the same download first.
        if not _is_lib_complete(lib_dir):
            raise


def _logging_binding(version: str, lib_dir: Path) -> list[tuple[str, str, str]]:
    """Return the SLF4J binding artifacts that Kafka ``version`` needs next to its jars.

    The kafka_2.13 POM brings slf4j-api but no binding, so without these the broker
    would log nothing.
    """
    slf4j_version = _jar_version(lib_dir, "slf4j-api")
    if kafka_major_version(version) >= 4:
        log4j_version = _jar_version(lib_dir, "log4j-core")
        artifact = "log4j-slf4j2-impl" if slf4j_version.startswith("2.") else "log4j-slf4j-impl"
        return [("org.apache.logging.log4j", artifact, log4j_version)]
    return [
        ("org.slf4j", "slf4j-reload4j", slf4j_version),
        ("ch.qos.reload4j", "reload4j", RELOAD4J_VERSION),
    ]


def _jar_version(lib_dir: Path, artifact: str) -> str:
    pattern = re.compile(re.escape(artifact) + r"-(\d[\w.\-]*)\.jar")
    for path in lib_dir.glob(f"{artifact}-*.jar"):
        match = pattern.fullmatch(path.name)
        if match:
            return match.group(1)
    raise ResolveError(
        f"{artifact} jar not found in {lib_dir} after resolving Kafka, so no logging binding can be chosen"
    )


def _copy_dependencies(mvn: str, artifacts: Sequence[tuple[str, str, str]], output_dir: Path, transitive: bool) -> None:
    """Copy ``artifacts`` (and, if ``transitive``, their runtime dependencies) into ``output_dir``."""
    with tempfile.TemporaryDirectory(prefix="kafka-resolve-") as work_dir:
        pom = Path(work_dir) / "pom.xml"
        pom.write_text(_resolver_pom(artifacts))
        command = [
            mvn,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={output_dir}",
            "-DincludeScope=runtime",
            f"-DexcludeTransitive={'false' if transitive else 'true'}",
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=MAVEN_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as error:
            raise ResolveError(f"mvn timed out after {MAVEN_TIMEOUT_S:.0f} s: {' '.join(command)}") from error
    if result.returncode != 0:
        names = ", ".join(":".join(artifact) for artifact in artifacts)
        raise ResolveError(
            f"mvn failed with exit code {result.returncode} while resolving {names}. "
            f"Check that the version exists on Maven Central and that Maven can reach it.\n"
            f"{_maven_errors(result.stdout + result.stderr)}"
        )


# Maven 3.8 writes color reset codes even in batch mode with -Dstyle.color=never.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _maven_errors(output: str) -> str:
    """Return the first block of [ERROR] lines of Maven output, or its last lines if there is none."""
    errors: list[str] = []
    for line in output.splitlines():
        text = _ANSI_ESCAPE.sub("", line).strip()
        if not text.startswith("[ERROR]"):
            continue
        # Maven ends the first block, which states the cause, with a bare [ERROR] line.
        if text == "[ERROR]" and errors:
            break
        errors.append(text)
    return "\n".join(errors or output.splitlines()[-LOG_TAIL_LINES:])


def _resolver_pom(artifacts: Sequence[tuple[str, str, str]]) -> str:
    dependencies = "".join(
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version></dependency>\n"
        for group, artifact, version in artifacts
    )
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>local.stream-detector</groupId>\n"
        "  <artifactId>kafka-jars</artifactId>\n"
        "  <version>1</version>\n"
        "  <packaging>pom</packaging>\n"
        f"  <dependencies>\n{dependencies}  </dependencies>\n"
        "</project>\n"
    )


# ---------------------------------------------------------------------------
# Java


def find_java(kafka_version: str) -> str:
    """Return the path of a ``java`` executable that can run Kafka ``kafka_version``.

    ``$JAVA_HOME/bin/java`` wins over ``java`` on PATH.

    Raises:
        JavaNotFoundError: no java was found, or it is older than Kafka needs
            (17 for Kafka 4.x, 8 for 3.x).
    """
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if java is None or not os.access(java, os.X_OK):
        raise JavaNotFoundError(
            "java not found (checked $JAVA_HOME/bin/java and PATH). Install a JDK 17 or newer, "
            "for example `apt-get install openjdk-17-jdk-headless`."
        )
    required = 17 if kafka_major_version(kafka_version) >= 4 else 8
    found = _java_major_version(java)
    if found is not None and found < required:
        raise JavaNotFoundError(
            f"{java} is Java {found}, but Kafka {kafka_version} needs Java {required} or newer. "
            "Install a JDK 17 or newer and put it on PATH or set JAVA_HOME."
        )
    return java


def _java_major_version(java: str) -> int | None:
    """Return the major version that ``java -version`` prints, or None if it cannot be parsed."""
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older report themselves as 1.x.
    return int(match.group(2) or 0) if major == 1 else major


# ---------------------------------------------------------------------------
# Configuration files


def server_properties(
    version: str, port: int, controller_port: int, log_dirs: Path, overrides: Mapping[str, str]
) -> str:
    """Return the server.properties text of a single-node KRaft broker on 127.0.0.1."""
    properties = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        "controller.quorum.voters": f"{NODE_ID}@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    if kafka_major_version(version) >= 4:
        # Kafka 4.0 added share groups (KIP-932), so 3.x does not know these keys.
        properties["share.coordinator.state.topic.replication.factor"] = "1"
        properties["share.coordinator.state.topic.min.isr"] = "1"
    properties.update(overrides)
    return "".join(f"{key}={value}\n" for key, value in properties.items())


def log_config(version: str, log_file: Path) -> tuple[str, str]:
    """Return the logging config text and its file name for Kafka ``version``.

    Kafka 4.x logs through log4j 2, Kafka 3.x through log4j 1 (reload4j). Both write
    INFO and above to ``log_file``, without rolling.
    """
    if kafka_major_version(version) >= 4:
        text = (
            "status = warn\n"
            # Without this, log4j's own shutdown hook can close the file before
            # Kafka's shutdown hook has logged the end of a clean shutdown.
            "shutdownHook = disable\n"
            "appender.server.type = File\n"
            "appender.server.name = server\n"
            f"appender.server.fileName = {log_file}\n"
            "appender.server.layout.type = PatternLayout\n"
            "appender.server.layout.pattern = [%d] %p %m (%c)%n\n"
            "rootLogger.level = INFO\n"
            "rootLogger.appenderRef.server.ref = server\n"
        )
        return text, "log4j2.properties"
    text = (
        "log4j.rootLogger=INFO, server\n"
        "log4j.appender.server=org.apache.log4j.FileAppender\n"
        f"log4j.appender.server.File={log_file}\n"
        "log4j.appender.server.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.server.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    )
    return text, "log4j.properties"


def _log_config_option(version: str, config_file: Path) -> str:
    if kafka_major_version(version) >= 4:
        return f"-Dlog4j2.configurationFile={config_file}"
    return f"-Dlog4j.configuration=file:{config_file}"


def random_cluster_id() -> str:
    """Return a new Kafka cluster id: 16 random bytes in URL-safe base64 without padding."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka's own generator avoids ids that start with "-", because they read as options.
        if not cluster_id.startswith("-"):
            return cluster_id


# ---------------------------------------------------------------------------
# Processes and the state file


def read_state(data_dir: Path) -> BrokerState | None:
    """Return the state stored by the last start in ``data_dir``, or None if there is none."""
    try:
        fields = json.loads((data_dir / STATE_FILE).read_text())
        return BrokerState(**fields)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as error:
        logger.warning("ignoring invalid state file %s: %s", data_dir / STATE_FILE, error)
        return None


def _write_state(data_dir: Path, state: BrokerState) -> None:
    (data_dir / PID_FILE).write_text(f"{state.pid}\n")
    temporary = data_dir / f"{STATE_FILE}.tmp"
    temporary.write_text(json.dumps(dataclasses.asdict(state), indent=2) + "\n")
    temporary.replace(data_dir / STATE_FILE)


def _remove_state(data_dir: Path) -> None:
    for name in (STATE_FILE, PID_FILE):
        (data_dir / name).unlink(missing_ok=True)


def is_broker_process(pid: int, data_dir: Path) -> bool:
    """Return whether ``pid`` is a live Kafka broker started on ``data_dir``.

    The command line must name this data dir's server.properties, so a pid that the
    system reused for another program does not count.
    """
    command_line = _command_line(pid)
    if command_line is None:
        return False
    return "kafka.Kafka" in command_line and str(data_dir / "server.properties") in command_line


def _command_line(pid: int) -> str | None:
    """Return the command line of a live, non-zombie process, or None."""
    proc_dir = Path("/proc") / str(pid)
    if Path("/proc/self").exists():
        try:
            stat = (proc_dir / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return None
            return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
    # Systems without /proc, such as macOS.
    result = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, timeout=10)
    output = result.stdout.strip()
    if result.returncode != 0 or not output or output.startswith("Z"):
        return None
    return output


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid``, unless the group is gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def stop_process_group(pid: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> int | None:
    """Stop the broker process group led by ``pid``: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Args:
        pid: pid of the broker, which leads its own process group.
        timeout: seconds to wait for a clean exit after SIGTERM.
        process: the Popen object when this process started the broker, so that
            the exit code can be collected.

    Returns:
        The exit code when ``process`` was given, else None.
    """
    _signal_group(pid, signal.SIGTERM)
    if _wait_for_exit(pid, timeout, process):
        return process.returncode if process else None

    logger.warning("broker pid %d did not exit %.0f s after SIGTERM, sending SIGKILL", pid, timeout)
    _signal_group(pid, signal.SIGKILL)
    if not _wait_for_exit(pid, 10.0, process):
        logger.error("broker pid %d is still running 10 s after SIGKILL", pid)
    return process.returncode if process else None


def _wait_for_exit(pid: int, timeout: float, process: subprocess.Popen[bytes] | None) -> bool:
    if process is not None:
        try:
            process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _command_line(pid) is None:
            return True
        time.sleep(0.1)
    return _command_line(pid) is None


# ---------------------------------------------------------------------------
# Readiness


def _client_config(bootstrap_servers: str) -> dict[str, str | int | float | bool]:
    return {
        "bootstrap.servers": bootstrap_servers,
        # Retry quickly while the broker starts, because the default backoff grows to 10 s.
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
        # Without this, librdkafka logs every refused connection to stderr. Callers
        # report failures themselves.
        "log_level": 0,
    }


def check_reachable(bootstrap_servers: str, timeout: float = 10.0) -> str:
    """Fetch cluster metadata from ``bootstrap_servers`` with a Kafka client.

    Args:
        bootstrap_servers: comma-separated host:port list.
        timeout: seconds to wait for the metadata response.

    Returns:
        The cluster id.

    Raises:
        BrokerUnreachableError: no metadata arrived within ``timeout`` seconds.
    """
    try:
        admin = AdminClient(_client_config(bootstrap_servers))
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as error:
        raise BrokerUnreachableError(
            f"no Kafka broker responded at {bootstrap_servers} within {timeout:.0f} s ({error.args[0]}). "
            "Check that the broker is running and the address is right."
        ) from error
    return str(metadata.cluster_id)


# ---------------------------------------------------------------------------
# The broker


class LocalKafka:
    """A single-node KRaft Kafka broker on 127.0.0.1, run as a child JVM.

    Usable as a context manager, which starts the broker on entry and stops it on exit.
    All state lives in ``data_dir``: server.properties, the logging config, the
    partition data (kraft-combined-logs/), the broker log (logs/server.log), the JVM
    output (logs/stdout.log) and the pid and state files.
    """

    def __init__(
        self,
        version: str = DEFAULT_KAFKA_VERSION,
        port: int = DEFAULT_PORT,
        controller_port: int | None = None,
        data_dir: Path | str | None = None,
        cache_dir: Path | str | None = None,
        heap: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT_S,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT_S,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        """Check the settings. Nothing starts until ``start()`` is called.

        Args:
            version: Kafka release on Maven Central, such as "4.4.0" or "3.9.1".
            port: client (PLAINTEXT) port on 127.0.0.1.
            controller_port: KRaft controller port on 127.0.0.1, or a free port when None.
            data_dir: folder for config, data and logs, or ``default_data_dir()`` when None.
            cache_dir: jar cache root, or ``default_cache_dir()`` when None.
            heap: maximum JVM heap, such as "512m" or "1g", or ``default_heap()`` when None.
            start_timeout: seconds that ``start()`` allows for formatting the storage and
                for the broker to become ready. A first jar download is not counted.
            stop_timeout: seconds that ``stop()`` waits after SIGTERM before SIGKILL.
            overrides: extra server.properties entries. Listener, quorum, node id
                and log dir keys are rejected because LocalKafka sets them.

        Raises:
            ValueError: an invalid version, port, heap size or override key.
        """
        kafka_major_version(version)
        self.version = version
        self.port = _check_port(port, "port")
        if controller_port is None:
            controller_port = next(p for p in find_free_ports(2) if p != port)
        self.controller_port = _check_port(controller_port, "controller_port")
        if self.controller_port == self.port:
            raise ValueError(f"port and controller_port are both {port}. Choose two different ports.")
        self.data_dir = Path(data_dir or default_data_dir()).expanduser().absolute()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        self.heap = heap or default_heap()
        _heap_megabytes(self.heap)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.overrides = dict(overrides or {})
        reserved = sorted(RESERVED_KEYS.intersection(self.overrides))
        if reserved:
            raise ValueError(
                f"overrides may not set {', '.join(reserved)}: LocalKafka sets these to keep the broker "
                "on 127.0.0.1 and its files in data_dir"
            )
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    @property
    def bootstrap_servers(self) -> str:
        """Bootstrap address for Kafka clients, such as "127.0.0.1:9092"."""
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Pid of the broker JVM that this object started, or None before start() and after stop()."""
        return self._pid

    @property
    def server_log(self) -> Path:
        """Path of the broker's log4j log file."""
        return self.data_dir / "logs" / "server.log"

    @property
    def stdout_log(self) -> Path:
        """Path of the file that receives the JVM's stdout and stderr."""
        return self.data_dir / "logs" / "stdout.log"

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Resolve the jars if needed, format the storage, start the broker and wait until it is ready.

        Ready means that a Kafka admin client fetched metadata with this broker's
        cluster id. On any failure the broker process is stopped before the error
        is raised.

        Raises:
            BrokerError: this object or another process already runs a broker on data_dir.
            PortInUseError: port or controller_port is taken.
            JavaNotFoundError, MavenNotFoundError, ResolveError: see ``find_java`` and ``resolve_kafka``.
            BrokerStartError: the storage format failed, or the broker exited or
                was not ready within ``start_timeout`` seconds. The message contains
                the exit code and the log tail.
        """
        self._check_can_start()
        java = find_java(self.version)
        lib_dir = resolve_kafka(self.version, self.cache_dir)
        config_path = self._write_config_files()
        started = time.monotonic()
        cluster_id = self._format_storage(java, lib_dir, config_path)

        logger.info("starting Kafka %s on %s (data dir %s) ...", self.version, self.bootstrap_servers, self.data_dir)
        self._process = self._spawn(java, lib_dir, config_path)
        self._pid = self._process.pid
        state = BrokerState(
            self._pid, self.version, self.port, self.controller_port, cluster_id, started_at=time.time()
        )
        _write_state(self.data_dir, state)
        try:
            self._wait_until_ready(cluster_id, started + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "Kafka %s is ready at %s after %.1f s", self.version, self.bootstrap_servers, time.monotonic() - started
        )

    def stop(self) -> None:
        """Stop the broker started by this object, or the one recorded in data_dir.

        Sends SIGTERM to the broker's process group, waits up to ``stop_timeout``
        seconds, then sends SIGKILL. Does nothing when no broker is running.
        """
        process = self._process
        if process is not None:
            if process.poll() is None:
                logger.info("stopping Kafka broker pid %d ...", process.pid)
                stop_process_group(process.pid, self.stop_timeout, process)
        else:
            state = read_state(self.data_dir)
            if state is not None and is_broker_process(state.pid, self.data_dir):
                logger.info("stopping Kafka broker pid %d ...", state.pid)
                stop_process_group(state.pid, self.stop_timeout)
        _remove_state(self.data_dir)
        self._process = None
        self._pid = None

    def is_running(self) -> bool:
        """Return whether a broker started by this object, or recorded in data_dir, is alive."""
        if self._process is not None:
            return self._process.poll() is None
        state = read_state(self.data_dir)
        return state is not None and is_broker_process(state.pid, self.data_dir)

    # -- steps of start() ---------------------------------------------------

    def _check_can_start(self) -> None:
        if self.is_running():
            state = read_state(self.data_dir)
            pid = state.pid if state else self._pid
            raise BrokerError(
                f"a Kafka broker (pid {pid}) is already running on data dir {self.data_dir}. "
                "Stop it first, or use another data dir."
            )
        if not is_port_free(self.port):
            raise PortInUseError(self.port, "broker")
        if not is_port_free(self.controller_port):
            raise PortInUseError(self.controller_port, "controller")

    def _write_config_files(self) -> Path:
        """Write server.properties and the logging config, and return the server.properties path."""
        log_dir = self.server_log.parent
        log_dir.mkdir(parents=True, exist_ok=True)
        # Keep the previous run's log for debugging, but start the log tail fresh.
        for path in (self.server_log, self.stdout_log):
            if path.exists():
                path.replace(path.with_name(path.name + ".1"))

        log_text, log_name = log_config(self.version, self.server_log)
        (self.data_dir / log_name).write_text(log_text)
        config_path = self.data_dir / "server.properties"
        config_path.write_text(
            server_properties(
                self.version, self.port, self.controller_port, self.data_dir / "kraft-combined-logs", self.overrides
            )
        )
        return config_path

    def _jvm_command(self, java: str, lib_dir: Path, main_class: str) -> list[str]:
        initial_heap = INITIAL_HEAP if _heap_megabytes(INITIAL_HEAP) <= _heap_megabytes(self.heap) else self.heap
        _, log_name = log_config(self.version, self.server_log)
        return [
            java,
            f"-Xms{initial_heap}",
            f"-Xmx{self.heap}",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.server_log.parent}",
            _log_config_option(self.version, self.data_dir / log_name),
            "-cp",
            str(lib_dir / "*"),
            main_class,
        ]

    def _format_storage(self, java: str, lib_dir: Path, config_path: Path) -> str:
        """Format the KRaft log dir unless it is formatted already, and return the cluster id."""
        # Kafka 4.x rejects --ignore-formatted with a cluster id other than the stored one.
        cluster_id = self._stored_cluster_id() or random_cluster_id()
        command = self._jvm_command(java, lib_dir, "kafka.tools.StorageTool") + [
            "format",
            "--ignore-formatted",
            "-t",
            cluster_id,
            "-c",
            str(config_path),
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=STORAGE_FORMAT_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise BrokerStartError(
                f"formatting {self.data_dir} timed out after {STORAGE_FORMAT_TIMEOUT_S:.0f} s", None, ""
            ) from error
        output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
        if result.returncode != 0:
            raise BrokerStartError(
                f"kafka.tools.StorageTool format failed with exit code {result.returncode} for {config_path}. "
                f"If the data dir holds data of another Kafka version, delete {self.data_dir} and retry.\n"
                f"{output}",
                result.returncode,
                output,
            )
        stored = self._stored_cluster_id()
        if stored is None:
            raise BrokerStartError(
                f"no cluster.id in {self._meta_properties} after formatting the storage", None, output
            )
        return stored

    @property
    def _meta_properties(self) -> Path:
        return self.data_dir / "kraft-combined-logs" / "meta.properties"

    def _stored_cluster_id(self) -> str | None:
        """Return the cluster id of an already formatted log dir, or None."""
        try:
            text = self._meta_properties.read_text()
        except FileNotFoundError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cluster.id":
                return value.strip()
        return None

    def _spawn(self, java: str, lib_dir: Path, config_path: Path) -> subprocess.Popen[bytes]:
        command = self._jvm_command(java, lib_dir, "kafka.Kafka") + [str(config_path)]
        with self.stdout_log.open("ab") as output:
            # A new session makes the JVM lead its own process group, so stop() can
            # signal the group, and keeps it running after the CLI that started it exits.
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )

    def _wait_until_ready(self, cluster_id: str, deadline: float) -> None:
        """Poll cluster metadata until this broker responds with ``cluster_id``."""
        process = self._process
        if process is None:
            raise BrokerError("internal error: LocalKafka._wait_until_ready called before the broker was spawned")
        admin = AdminClient(_client_config(self.bootstrap_servers))
        while True:
            exit_code = process.poll()
            if exit_code is not None:
                raise self._start_error(f"Kafka {self.version} exited with code {exit_code} while starting", exit_code)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._start_error(
                    f"Kafka {self.version} was not ready at {self.bootstrap_servers} within "
                    f"{self.start_timeout:.0f} s. On a slow machine, raise start_timeout (--timeout in the CLI)",
                    None,
                )
            try:
                metadata = admin.list_topics(timeout=min(2.0, remaining))
            except KafkaException:
                time.sleep(0.2)
                continue
            # Another broker on the same port would respond with a different cluster id.
            if metadata.cluster_id == cluster_id and metadata.brokers:
                return
            time.sleep(0.2)

    def _start_error(self, summary: str, exit_code: int | None) -> BrokerStartError:
        tail = tail_lines(self.server_log)
        message = f"{summary}."
        error = first_error(self.server_log)
        if error:
            message += f"\nFirst error in {self.server_log}:\n{error}"
        message += f"\nLast {LOG_TAIL_LINES} lines of {self.server_log}:\n{tail or '(empty)'}"
        jvm_output = tail_lines(self.stdout_log, 15)
        if jvm_output:
            message += f"\nLast lines of {self.stdout_log}:\n{jvm_output}"
            tail = f"{tail}\n{jvm_output}"
        if "Address already in use" in error + tail:
            for port, role in ((self.port, "broker"), (self.controller_port, "controller")):
                if not is_port_free(port):
                    return PortInUseStartError(port, role, message, exit_code, tail)
        return BrokerStartError(message, exit_code, tail)


class PortInUseStartError(BrokerStartError, PortInUseError):
    """The broker exited at start because another process took one of its ports."""

    def __init__(self, port: int, role: str, message: str, exit_code: int | None, log_tail: str) -> None:
        PortInUseError.__init__(self, port, role, "\n" + message)
        self.exit_code = exit_code
        self.log_tail = log_tail


def _check_port(port: int, name: str) -> int:
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"invalid {name} {port!r}: expected a TCP port number from 1 to 65535")
    return port


# ---------------------------------------------------------------------------
# Command line


def _build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Start, stop or check a local single-node Kafka broker on 127.0.0.1.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{start,stop,status}")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=default_data_dir(),
        help="folder for the broker's config, data, logs and pid file (default: %(default)s)",
    )

    start = commands.add_parser(
        "start", parents=[common], help="start a broker in the background and wait until it is ready"
    )
    start.add_argument(
        "--version", default=DEFAULT_KAFKA_VERSION, help="Kafka release from Maven Central (default: %(default)s)"
    )
    start.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="client (PLAINTEXT) port on 127.0.0.1 (default: %(default)s)"
    )
    start.add_argument(
        "--controller-port",
        type=int,
        metavar="PORT",
        default=None,
        help="KRaft controller port on 127.0.0.1 (default: a free port)",
    )
    start.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        default=default_cache_dir(),
        help=f"folder for the downloaded Kafka jars, one subfolder per version (default: ${CACHE_ENV} or %(default)s)",
    )
    start.add_argument(
        "--heap",
        default=default_heap(),
        metavar="SIZE",
        help=f"maximum JVM heap size with unit k, m or g, such as 512m or 1g (default: ${HEAP_ENV} or %(default)s)",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT_S,
        metavar="SECONDS",
        help=(
            "maximum time in seconds to format the storage and wait for the broker to be ready, "
            "not counting the first jar download (default: %(default)s)"
        ),
    )

    stop = commands.add_parser("stop", parents=[common], help="stop the broker running on the data dir")
    stop.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_STOP_TIMEOUT_S,
        metavar="SECONDS",
        help="maximum time in seconds to wait after SIGTERM before sending SIGKILL (default: %(default)s)",
    )

    commands.add_parser(
        "status", parents=[common], help="print whether a broker is running on the data dir (exit code 1 when stopped)"
    )
    return parser


def _command_start(args: argparse.Namespace) -> int:
    data_dir = args.data_dir.expanduser().absolute()
    state = read_state(data_dir)
    if state is not None and is_broker_process(state.pid, data_dir):
        print(
            f"Kafka {state.version} is already running at {state.bootstrap_servers} (pid {state.pid}, "
            f"data dir {data_dir})."
        )
        return 0

    try:
        broker = LocalKafka(
            version=args.version,
            port=args.port,
            controller_port=args.controller_port,
            data_dir=data_dir,
            cache_dir=args.cache_dir,
            heap=args.heap,
            start_timeout=args.timeout,
        )
        broker.start()
    except PortInUseError as error:
        flag = "--port" if error.role == "broker" else "--controller-port"
        raise BrokerError(f"{error} Pass another port with {flag}.") from error

    stop_command = stop_command_for(data_dir)
    print(f"Kafka {broker.version} is ready at {broker.bootstrap_servers} (pid {broker.pid}).")
    print(f"Broker log: {broker.server_log}")
    print(f"Stop it with: {stop_command}")
    return 0


def stop_command_for(data_dir: Path) -> str:
    """Return a shell command that stops the broker of ``data_dir``, using this Python interpreter."""
    return f"{shlex.quote(sys.executable)} -m deploy.kafka_local stop --data-dir {shlex.quote(str(data_dir))}"


def _command_stop(args: argparse.Namespace) -> int:
    data_dir = args.data_dir.expanduser().absolute()
    state = read_state(data_dir)
    if state is None or not is_broker_process(state.pid, data_dir):
        _remove_state(data_dir)
        print(f"No Kafka broker is running on data dir {data_dir}.")
        return 0
    stop_process_group(state.pid, args.timeout)
    _remove_state(data_dir)
    print(f"Stopped Kafka {state.version} (pid {state.pid}) at {state.bootstrap_servers}.")
    return 0


def _command_status(args: argparse.Namespace) -> int:
    data_dir = args.data_dir.expanduser().absolute()
    state = read_state(data_dir)
    if state is None or not is_broker_process(state.pid, data_dir):
        print(f"stopped (data dir {data_dir})")
        return 1
    print(f"running: Kafka {state.version} at {state.bootstrap_servers}, pid {state.pid}, data dir {data_dir}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "python -m deploy.kafka_local") -> int:
    """Run the command line and return the process exit code.

    Args:
        argv: the arguments; ``sys.argv[1:]`` when None.
        prog: the command name shown in help and usage.
    """
    args = _build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    handlers = {"start": _command_start, "stop": _command_stop, "status": _command_status}
    try:
        return handlers[args.command](args)
    except (BrokerError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
