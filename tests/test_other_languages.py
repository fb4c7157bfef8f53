"""The contract from other languages: the Node.js, C++ and Go example clients create their own
run on a real server and train in it (the default run untouched), get INVALID_ARGUMENT for their
malformed call, and write tensors the Python codec reads.

The clients make their data with the same seeded PRNG (mulberry32 + Box-Muller); the test makes
it a third time here, so the least-squares fit they must reach is computed independently.
Skips only when the other languages' toolchains are missing: scripts/install-other-language-deps.sh
installs them (CI runs it).
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.defaults import channel_options
from gradserve.server.app import GradientServer
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "examples" / "node"
CPP_DIR = ROOT / "examples" / "cpp"
GO_DIR = ROOT / "examples" / "go"
# Debian's Go libraries, as source (golang-google-grpc-dev and friends): a GOPATH root.
GOCODE = Path(os.environ.get("GRADSERVE_GOCODE", "/usr/share/gocode"))
GO_LIBRARIES = (
    "google.golang.org/grpc",
    "google.golang.org/protobuf",
    "github.com/golang/protobuf/ptypes",
    "google.golang.org/genproto/googleapis/rpc/errdetails",
)
INSTALL_HINT = "run scripts/install-other-language-deps.sh"

# Converges from the server's random start to within a few thousandths of the least-squares fit
# (0.1 leaves minibatch SGD wandering ~0.02 around it; 0.01 x 100 epochs has not converged).
LEARNING_RATE = "0.02"
EPOCHS = "300"
SEED = 7
TOLERANCE = 0.01
CLIENT_TIMEOUT_S = 300
BUILD_TIMEOUT_S = 600

# What examples/node/encode-fixtures.js and `gradserve_client --encode-fixtures` encode.
EXPECTED: dict[str, torch.Tensor] = {
    "float32": torch.tensor([1.5, -2.25, 0.1, math.inf, -0.0, 1e-45]).reshape(2, 3),
    "float64": torch.tensor([0.1, -1e300, 5e-324, -math.inf], dtype=torch.float64),
    "float16": torch.tensor([1, -2.5, 65504, 2**-24, 0.1, -0.0], dtype=torch.float16).reshape(3, 2),
    "bfloat16": torch.tensor([1, -2, 3.140625, 0.1, 1e30, -0.0], dtype=torch.bfloat16),
    "int64": torch.tensor([0, -1, 2**53 + 1, -(2**63), 2**63 - 1], dtype=torch.int64),
    "int32": torch.tensor([-(2**31), 2**31 - 1, 7, -7], dtype=torch.int32).reshape(2, 2),
    "int16": torch.tensor([-32768, 32767, 1], dtype=torch.int16),
    "int8": torch.tensor([-128, 127, 0], dtype=torch.int8),
    "uint8": torch.tensor([0, 255, 128], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True, True]).reshape(2, 1, 2),
    "scalar_float32": torch.tensor(42.5),
    "empty_float32": torch.empty(0, 3),
}
CPP_FIXTURES = ("float32", "int64", "scalar_float32", "empty_float32")
GO_FIXTURES = ("float32", "float64", "int64", "int32", "bool", "scalar_float32", "empty_float32")


# ---- the clients' data, made again --------------------------------------------------------


def mulberry32(seed: int) -> Callable[[], float]:
    state = seed & 0xFFFFFFFF

    def mul(a: int, b: int) -> int:
        return (a * b) & 0xFFFFFFFF

    def next_float() -> float:
        nonlocal state
        state = (state + 0x6D2B79F5) & 0xFFFFFFFF
        t = mul(state ^ (state >> 15), state | 1)
        t ^= (t + mul(t ^ (t >> 7), t | 61)) & 0xFFFFFFFF
        return ((t ^ (t >> 14)) & 0xFFFFFFFF) / 4294967296

    return next_float


def client_data(seed: int, count: int = 100) -> tuple[np.ndarray, np.ndarray]:
    random = mulberry32(seed)
    x = np.array([random() for _ in range(count)], dtype=np.float32)
    noise = []
    for _ in range(count):
        u1 = 1 - random()
        u2 = random()
        noise.append(math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2))
    y = (2 * x.astype(np.float64) + 1 + 0.1 * np.array(noise)).astype(np.float32)
    return x, y


def least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    design = np.stack([x.astype(np.float64), np.ones(len(x))], axis=1)
    (w, b), *_ = np.linalg.lstsq(design, y.astype(np.float64), rcond=None)
    return float(w), float(b)


def test_the_data_generator_matches_the_node_client() -> None:
    """Guards the reimplementation above: the first sample of seed 1, as Node prints it."""
    x, y = client_data(1)
    assert float(x[0]) == pytest.approx(0.6270739436149597, abs=0)
    assert float(y[0]) == pytest.approx(2.3619372844696045, abs=1e-6)


# ---- running the clients -------------------------------------------------------------------


def _number(pattern: str, output: str) -> tuple[float, ...]:
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{output}"
    return tuple(float(group) for group in match.groups())


def runs_on(server: GradientServer, metadata: tuple[tuple[str, str], ...] = ()) -> dict[str, int]:
    """The server's ListRuns as the caller of `metadata` sees it: run name -> version."""
    with grpc.insecure_channel(server.address, options=channel_options()) as channel:
        answer = pb_grpc.GradientServiceStub(channel).ListRuns(
            pb.ListRunsRequest(), timeout=30, metadata=metadata
        )
    return {summary.run: summary.model_version for summary in answer.runs}


def run_parameters(server: GradientServer, run: str) -> tuple[float, float]:
    with grpc.insecure_channel(server.address, options=channel_options()) as channel:
        answer = pb_grpc.GradientServiceStub(channel).GetParameters(
            pb.GetParametersRequest(run=run), timeout=30
        )
    values = {t.name: float(tensor_from_proto(t).item()) for t in answer.parameters}
    return values["w"], values["b"]


def printed_run(output: str) -> str:
    match = re.search(r"^Run: ([A-Za-z0-9._-]+), model linear, optimizer sgd, version 0$",
                      output, re.MULTILINE)  # fmt: skip
    assert match, f"no 'Run: ...' line in:\n{output}"
    return match.group(1)


def check_training_run(command: list[str], server: GradientServer, run_name: str) -> None:
    run = subprocess.run(
        [*command, "--address", server.address, "--run", run_name, "--lr", LEARNING_RATE,
         "--epochs", EPOCHS, "--seed", str(SEED)],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, cwd=ROOT, check=False,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert printed_run(output) == run_name

    expected_w, expected_b = least_squares(*client_data(SEED))
    printed_w, printed_b = _number(r"^Least squares: w=(\S+) b=(\S+)$", output)
    assert (printed_w, printed_b) == pytest.approx((expected_w, expected_b), abs=1e-5)

    epochs = [int(n) for n in re.findall(r"^Epoch (\d+), Loss: \d+\.\d{4}$", output, re.M)]
    assert epochs == list(range(10, int(EPOCHS) + 1, 10))

    final_w, final_b = _number(r"^Final: w=(\S+) b=(\S+)$", output)
    assert abs(final_w - expected_w) < TOLERANCE, output
    assert abs(final_b - expected_b) < TOLERANCE, output
    # It trained its own run, which stays on the server; the default run was not touched.
    assert runs_on(server) == {"": 0, run_name: int(EPOCHS) * 10}
    assert server.store.version == 0
    # The values it read back are its run's.
    assert _number(r"^GetParameters: w=(\S+) b=(\S+) version=", output) == pytest.approx(
        run_parameters(server, run_name), abs=1e-6
    )

    assert re.search(r"^Malformed call: status=INVALID_ARGUMENT code=3: inputs\.data", output, re.M)
    assert re.search(r"^Field violation: field=inputs\.data description=\S", output, re.M), output


def check_fixtures(printed: str, names: tuple[str, ...]) -> None:
    encoded = json.loads(printed)
    assert sorted(encoded) == sorted(names)
    for name in names:
        message = pb.Tensor.FromString(base64.b64decode(encoded[name]))
        expected = EXPECTED[name]
        decoded = tensor_from_proto(message, name)
        assert message.name == name
        assert decoded.dtype == expected.dtype, name
        assert decoded.shape == expected.shape, name
        assert torch.equal(decoded, expected), (name, decoded, expected)
        # Byte for byte what the Python codec writes: catches -0.0 and NaN payloads too.
        assert message.data == tensor_to_proto(expected).data, name


# ---- Node.js --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    executable = shutil.which("node")
    if executable is None:
        pytest.skip(f"node is not installed ({INSTALL_HINT})")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip(f"examples/node has no node_modules ({INSTALL_HINT})")
    return executable


def test_node_client_trains_and_gets_invalid_argument(node: str, server: GradientServer) -> None:
    check_training_run([node, str(NODE_DIR / "client.js")], server, "node-fit")


def test_node_tensors_decode_exactly_in_python(node: str) -> None:
    run = subprocess.run(
        [node, str(NODE_DIR / "encode-fixtures.js")],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    check_fixtures(run.stdout, tuple(EXPECTED))


# ---- C++ ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpp_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Builds examples/cpp from the clean tree into a temporary directory."""
    missing = [tool for tool in ("cmake", "protoc", "grpc_cpp_plugin", "pkg-config", "c++")
               if shutil.which(tool) is None]  # fmt: skip
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed ({INSTALL_HINT})")
    probe = ["pkg-config", "--exists", "grpc++", "protobuf"]
    if subprocess.run(probe, check=False, timeout=30).returncode:
        pytest.skip(f"libgrpc++-dev / libprotobuf-dev not installed ({INSTALL_HINT})")
    build = tmp_path_factory.mktemp("cpp-build")
    for step in (
        ["cmake", "-S", str(CPP_DIR), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "--parallel", "2"],
    ):
        run = subprocess.run(
            step, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
        assert run.returncode == 0, run.stdout + run.stderr
    return build / "gradserve_client"


def test_cpp_client_trains_and_gets_invalid_argument(
    cpp_client: Path, server: GradientServer
) -> None:
    check_training_run([str(cpp_client)], server, "cpp-fit")


def test_cpp_tensors_decode_exactly_in_python(cpp_client: Path) -> None:
    run = subprocess.run(
        [str(cpp_client), "--encode-fixtures"], capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    check_fixtures(run.stdout, CPP_FIXTURES)


# ---- Go -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generates gradserve.v1 for Go from proto/ (protoc-gen-go, protoc-gen-go-grpc, no flags:
    the proto's go_package says where) and builds examples/go against Debian's Go libraries,
    offline, in a temporary GOPATH."""
    missing = [tool for tool in ("go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc")
               if shutil.which(tool) is None]  # fmt: skip
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed ({INSTALL_HINT})")
    absent = [library for library in GO_LIBRARIES if not (GOCODE / "src" / library).is_dir()]
    if absent:
        pytest.skip(f"Go libraries missing under {GOCODE}: {', '.join(absent)} ({INSTALL_HINT})")
    gopath = tmp_path_factory.mktemp("gopath")
    (gopath / "src").mkdir()
    generate = ["protoc", "-I", str(ROOT / "proto"), f"--go_out={gopath / 'src'}",
                f"--go-grpc_out={gopath / 'src'}", "gradserve/v1/gradserve.proto"]  # fmt: skip
    run = subprocess.run(generate, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    generated = gopath / "src" / "github.com/gradserve/gradserve/gen/go/gradserve/v1"
    assert sorted(p.name for p in generated.iterdir()) == [
        "gradserve.pb.go",
        "gradserve_grpc.pb.go",
    ]
    package = gopath / "src" / "github.com/gradserve/gradserve/examples/go"
    package.mkdir(parents=True)
    shutil.copy(GO_DIR / "main.go", package)
    binary = gopath / "gradserve-go-client"
    environment = {
        **os.environ,
        # GOPATH mode: Debian's libraries are source trees, not modules a proxy would serve.
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{GOCODE}",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOCACHE": os.environ.get("GOCACHE", str(gopath / "cache")),
    }
    run = subprocess.run(
        ["go", "build", "-o", str(binary), "."], cwd=package, env=environment,
        capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return binary


def test_go_client_trains_and_reads_the_field_violation(
    go_client: Path, server: GradientServer
) -> None:
    check_training_run([str(go_client)], server, "go-fit")


def test_go_tensors_decode_exactly_in_python(go_client: Path) -> None:
    run = subprocess.run(
        [str(go_client), "--encode-fixtures"], capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    check_fixtures(run.stdout, GO_FIXTURES)


# ---- Bearer tokens --------------------------------------------------------------------------

TOKEN = "s3cret-token-for-the-example-clients"


def check_token_runs(command: list[str], make_server: Callable[..., GradientServer]) -> None:
    """With GRADSERVE_TOKEN the client trains against a server that wants tokens, in a run
    whose name it made itself; without it the first call (CreateRun) is UNAUTHENTICATED and
    nothing is created."""
    server = make_server(auth_tokens=(TOKEN,))
    arguments = ["--address", server.address, "--lr", LEARNING_RATE, "--epochs", "2"]
    environment = {k: v for k, v in os.environ.items() if k != "GRADSERVE_TOKEN"}
    refused = subprocess.run(
        [*command, *arguments], capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S,
        cwd=ROOT, check=False, env=environment,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "UNAUTHENTICATED" in refused.stdout + refused.stderr
    as_client = (("authorization", f"Bearer {TOKEN}"),)
    assert runs_on(server, as_client) == {"": 0}
    allowed = subprocess.run(
        [*command, *arguments], capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S,
        cwd=ROOT, check=False, env={**environment, "GRADSERVE_TOKEN": TOKEN},
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    run_name = printed_run(allowed.stdout)
    assert runs_on(server, as_client) == {"": 0, run_name: 20}
    assert server.store.version == 0
    assert TOKEN not in allowed.stdout + allowed.stderr


def test_node_client_sends_the_bearer_token(node: str, make_server) -> None:
    check_token_runs([node, str(NODE_DIR / "client.js")], make_server)


def test_cpp_client_sends_the_bearer_token(cpp_client: Path, make_server) -> None:
    check_token_runs([str(cpp_client)], make_server)


def test_go_client_sends_the_bearer_token(go_client: Path, make_server) -> None:
    check_token_runs([str(go_client)], make_server)


def test_node_custom_loss_trains_to_the_least_squares_fit(
    node: str, server: GradientServer
) -> None:
    """examples/node/custom_loss.js computes the MSE gradient itself (ComputeOutputs, then
    BackwardOutputs) and reaches the least-squares line within 1e-4."""
    run = subprocess.run(
        [node, str(NODE_DIR / "custom_loss.js"), "--address", server.address, "--seed", str(SEED)],
        capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S, cwd=ROOT, check=False,
    )  # fmt: skip
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    expected_w, expected_b = least_squares(*client_data(SEED))
    w, b = (float(server.store.model.module.state_dict()[name].item()) for name in ("w", "b"))
    assert abs(w - expected_w) < 1e-4 and abs(b - expected_b) < 1e-4, output
    assert _number(r"^Final: w=(\S+) b=(\S+)$", output) == pytest.approx((w, b), abs=1e-6)
    assert server.store.accumulated_batches == 0 and server.store.version == 400
    assert re.search(r"^Used handle: status=FAILED_PRECONDITION field=handle$", output, re.M)
