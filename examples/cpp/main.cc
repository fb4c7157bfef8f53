// A gradserve.v1 client in C++, built from proto/ and docs/protocol.md alone: creates its own
// training run (CreateRun, a linear model), fits y = 2x + 1 in it by sending batches to
// ComputeGradients and stepping with ApplyUpdate, then makes one malformed call on purpose to
// show what an error looks like.
//
//   gradserve_client [--address 127.0.0.1:50051] [--run NAME] [--lr 0.01] [--epochs 100] [--seed 1]
//   gradserve_client --encode-fixtures   (JSON of base64 Tensor messages, for the codec test)
//
// Every request names the run in its `run` field and in the `gradserve-run` metadata, which
// lets a proxy place runs on server replicas without reading bodies (docs/scaling.md). Without
// --run (or GRADSERVE_RUN) the name is made here (cpp-<random hex>).

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gradserve/v1/gradserve.grpc.pb.h"
#include "google/rpc/status.pb.h"

namespace {

namespace v1 = gradserve::v1;

constexpr int kBatchSize = 10;
constexpr int kMaxMessageBytes = 64 * 1024 * 1024;  // the server's default, both directions
constexpr auto kDeadline = std::chrono::seconds(10);
constexpr char kRunMetadata[] = "gradserve-run";

// ---- Tensors: row-major, fixed-width little-endian whatever the host's byte order ----------

void PutLittleEndian(std::string* out, uint64_t bits, int size) {
  for (int i = 0; i < size; ++i) out->push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
}

uint64_t GetLittleEndian(const std::string& data, size_t offset, int size) {
  uint64_t bits = 0;
  for (int i = 0; i < size; ++i) {
    bits |= static_cast<uint64_t>(static_cast<unsigned char>(data[offset + i])) << (8 * i);
  }
  return bits;
}

uint32_t FloatBits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

v1::Tensor Float32Tensor(const float* values, std::vector<int64_t> shape, const std::string& name = "") {
  v1::Tensor tensor;
  tensor.set_name(name);
  tensor.set_dtype(v1::DATA_TYPE_FLOAT32);
  int64_t count = 1;
  for (int64_t dim : shape) {
    tensor.add_shape(dim);
    count *= dim;
  }
  std::string* data = tensor.mutable_data();
  data->reserve(count * 4);
  for (int64_t i = 0; i < count; ++i) PutLittleEndian(data, FloatBits(values[i]), 4);
  return tensor;
}

v1::Tensor Int64Tensor(const std::vector<int64_t>& values, std::vector<int64_t> shape, const std::string& name) {
  v1::Tensor tensor;
  tensor.set_name(name);
  tensor.set_dtype(v1::DATA_TYPE_INT64);
  for (int64_t dim : shape) tensor.add_shape(dim);
  for (int64_t value : values) PutLittleEndian(tensor.mutable_data(), static_cast<uint64_t>(value), 8);
  return tensor;
}

// The first element of a FLOAT32 tensor (w and b of the linear model are shape [1]).
bool FirstFloat32(const v1::Tensor& tensor, float* value) {
  if (tensor.dtype() != v1::DATA_TYPE_FLOAT32 || tensor.data().size() < 4) return false;
  uint32_t bits = static_cast<uint32_t>(GetLittleEndian(tensor.data(), 0, 4));
  std::memcpy(value, &bits, sizeof bits);
  return true;
}

// ---- Data: the same PRNG and formulas as examples/node/data.js -----------------------------

struct Mulberry32 {
  uint32_t state;
  double Next() {
    state += 0x6d2b79f5u;
    uint32_t t = state;
    t = (t ^ (t >> 15)) * (t | 1u);
    t ^= t + (t ^ (t >> 7)) * (t | 61u);
    return static_cast<double>(t ^ (t >> 14)) / 4294967296.0;
  }
};

struct Data {
  std::vector<float> x, y;
};

Data MakeData(uint32_t seed, int count = 100) {
  Mulberry32 random{seed};
  Data data{std::vector<float>(count), std::vector<float>(count)};
  for (int i = 0; i < count; ++i) data.x[i] = static_cast<float>(random.Next());
  const double pi = 3.141592653589793;
  for (int i = 0; i < count; ++i) {
    double u1 = 1 - random.Next();
    double u2 = random.Next();
    double noise = std::sqrt(-2 * std::log(u1)) * std::cos(2 * pi * u2);
    data.y[i] = static_cast<float>(2 * static_cast<double>(data.x[i]) + 1 + 0.1 * noise);
  }
  return data;
}

void LeastSquares(const Data& data, double* w, double* b) {
  const size_t n = data.x.size();
  double sx = 0, sy = 0;
  for (size_t i = 0; i < n; ++i) {
    sx += data.x[i];
    sy += data.y[i];
  }
  const double mx = sx / n, my = sy / n;
  double sxy = 0, sxx = 0;
  for (size_t i = 0; i < n; ++i) {
    sxy += (data.x[i] - mx) * (data.y[i] - my);
    sxx += (data.x[i] - mx) * (data.x[i] - mx);
  }
  *w = sxy / sxx;
  *b = my - *w * mx;
}

// ---- Calls ----------------------------------------------------------------------------------

// Every call: a deadline, the run in the `gradserve-run` metadata (its request names it too),
// and the bearer token a server started with tokens wants (GRADSERVE_TOKEN), in the
// `authorization` metadata.
void SetDeadline(grpc::ClientContext* context, const std::string& run) {
  context->set_deadline(std::chrono::system_clock::now() + kDeadline);
  context->AddMetadata(kRunMetadata, run);
  if (const char* token = std::getenv("GRADSERVE_TOKEN"); token != nullptr && *token != '\0') {
    context->AddMetadata("authorization", std::string("Bearer ") + token);
  }
}

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  int index = static_cast<int>(code);
  return index >= 0 && index <= 16 ? kNames[index] : "UNKNOWN";
}

int Fail(const char* what, const grpc::Status& status) {
  std::fprintf(stderr, "gradserve client failed: %s: %s: %s\n", what, CodeName(status.error_code()),
               status.error_message().c_str());
  return 1;
}

// Four bytes short of the [2, 1] float32 shape it claims: the server must refuse it.
bool ShowMalformedCall(v1::GradientService::Stub* stub, const std::string& run) {
  const float inputs[] = {1, 2}, targets[] = {3, 5};
  v1::ComputeGradientsRequest request;
  request.set_run(run);
  *request.mutable_inputs() = Float32Tensor(inputs, {2, 1});
  request.mutable_inputs()->mutable_data()->resize(4);
  *request.mutable_targets() = Float32Tensor(targets, {2, 1});
  v1::ComputeGradientsResponse response;
  grpc::ClientContext context;
  SetDeadline(&context, run);
  grpc::Status status = stub->ComputeGradients(&context, request, &response);
  if (status.ok()) {
    std::printf("Malformed call: unexpectedly accepted\n");
    return false;
  }
  std::printf("Malformed call: status=%s code=%d: %s\n", CodeName(status.error_code()),
              static_cast<int>(status.error_code()), status.error_message().c_str());
  // error_details() is the serialized google.rpc.Status of the grpc-status-details-bin trailer.
  google::rpc::Status details;
  if (details.ParseFromString(status.error_details())) {
    for (const auto& any : details.details()) {
      google::rpc::BadRequest bad_request;
      if (!any.UnpackTo(&bad_request)) continue;
      for (const auto& violation : bad_request.field_violations()) {
        std::printf("Field violation: field=%s description=%s\n", violation.field().c_str(),
                    violation.description().c_str());
      }
    }
  }
  return status.error_code() == grpc::StatusCode::INVALID_ARGUMENT;
}

// A run name of our own, so that even the CreateRun carries it for a proxy to place.
std::string MakeRunName() {
  std::random_device device;
  char name[16];
  std::snprintf(name, sizeof name, "cpp-%08x", static_cast<unsigned>(device()));
  return name;
}

int Train(const std::string& address, const std::string& run, double learning_rate, int epochs,
          uint32_t seed) {
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(kMaxMessageBytes);
  arguments.SetMaxSendMessageSize(kMaxMessageBytes);
  auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), arguments);
  auto stub = v1::GradientService::NewStub(channel);

  {
    v1::CreateRunRequest request;
    request.set_run(run);
    request.set_model("linear");
    v1::CreateRunResponse created;
    grpc::ClientContext context;
    SetDeadline(&context, run);
    grpc::Status status = stub->CreateRun(&context, request, &created);
    if (!status.ok()) return Fail("CreateRun", status);
    const v1::GetModelInfoResponse& info = created.info();
    std::printf("Run: %s, model %s, optimizer %s, version %lld\n", created.run().c_str(),
                info.model_spec().c_str(), info.optimizer().c_str(),
                static_cast<long long>(info.model_version()));
  }
  Data data = MakeData(seed);
  double fit_w, fit_b;
  LeastSquares(data, &fit_w, &fit_b);
  std::printf("Least squares: w=%.6f b=%.6f\n", fit_w, fit_b);

  const int count = static_cast<int>(data.x.size());
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    double loss_sum = 0;
    int batches = 0;
    for (int start = 0; start < count; start += kBatchSize) {
      const int rows = std::min(kBatchSize, count - start);
      v1::ComputeGradientsRequest request;
      request.set_run(run);
      *request.mutable_inputs() = Float32Tensor(&data.x[start], {rows, 1});
      *request.mutable_targets() = Float32Tensor(&data.y[start], {rows, 1});
      v1::ComputeGradientsResponse gradients;
      grpc::ClientContext gradients_context;
      SetDeadline(&gradients_context, run);
      grpc::Status status = stub->ComputeGradients(&gradients_context, request, &gradients);
      if (!status.ok()) return Fail("ComputeGradients", status);

      v1::ApplyUpdateRequest update;
      update.set_run(run);
      update.set_learning_rate(learning_rate);
      v1::ApplyUpdateResponse updated;
      grpc::ClientContext update_context;
      SetDeadline(&update_context, run);
      status = stub->ApplyUpdate(&update_context, update, &updated);
      if (!status.ok()) return Fail("ApplyUpdate", status);
      loss_sum += gradients.loss();
      ++batches;
    }
    if (epoch % 10 == 0) std::printf("Epoch %d, Loss: %.4f\n", epoch, loss_sum / batches);
  }

  v1::GetParametersRequest read;
  read.set_run(run);
  v1::GetParametersResponse parameters;
  grpc::ClientContext context;
  SetDeadline(&context, run);
  grpc::Status status = stub->GetParameters(&context, read, &parameters);
  if (!status.ok()) return Fail("GetParameters", status);
  std::map<std::string, float> values;
  for (const auto& tensor : parameters.parameters()) {
    float value;
    if (FirstFloat32(tensor, &value)) values[tensor.name()] = value;
  }
  std::printf("Final: w=%.6f b=%.6f\n", values["w"], values["b"]);
  std::printf("GetParameters: w=%.6f b=%.6f version=%lld\n", values["w"], values["b"],
              static_cast<long long>(parameters.model_version()));
  std::fflush(stdout);
  return ShowMalformedCall(stub.get(), run) ? 0 : 1;
}

// ---- Codec fixtures --------------------------------------------------------------------------

std::string Base64(const std::string& bytes) {
  static const char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    uint32_t n = (static_cast<unsigned char>(bytes[i]) << 16) |
                 (static_cast<unsigned char>(bytes[i + 1]) << 8) | static_cast<unsigned char>(bytes[i + 2]);
    for (int shift = 18; shift >= 0; shift -= 6) out.push_back(kAlphabet[(n >> shift) & 63]);
  }
  if (i < bytes.size()) {
    uint32_t n = static_cast<unsigned char>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) n |= static_cast<unsigned char>(bytes[i + 1]) << 8;
    out.push_back(kAlphabet[(n >> 18) & 63]);
    out.push_back(kAlphabet[(n >> 12) & 63]);
    out.push_back(i + 1 < bytes.size() ? kAlphabet[(n >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// The same names and values as examples/node/encode-fixtures.js (float32 and int64 here).
int EncodeFixtures() {
  const float float32[] = {1.5f, -2.25f, 0.1f, INFINITY, -0.0f, 1e-45f};
  const float scalar[] = {42.5f};
  std::vector<std::pair<std::string, v1::Tensor>> fixtures = {
      {"float32", Float32Tensor(float32, {2, 3}, "float32")},
      {"int64", Int64Tensor({0, -1, 9007199254740993LL, INT64_MIN, INT64_MAX}, {5}, "int64")},
      {"scalar_float32", Float32Tensor(scalar, {}, "scalar_float32")},
      {"empty_float32", Float32Tensor(nullptr, {0, 3}, "empty_float32")},
  };
  std::printf("{");
  for (size_t i = 0; i < fixtures.size(); ++i) {
    std::printf("%s\"%s\":\"%s\"", i ? "," : "", fixtures[i].first.c_str(),
                Base64(fixtures[i].second.SerializeAsString()).c_str());
  }
  std::printf("}\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string address = "127.0.0.1:50051";
  if (const char* from_env = std::getenv("GRADSERVE_ADDRESS")) address = from_env;
  std::string run;
  if (const char* from_env = std::getenv("GRADSERVE_RUN")) run = from_env;
  double learning_rate = 0.01;
  int epochs = 100;
  unsigned long seed = 1;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--encode-fixtures") return EncodeFixtures();
    if (i + 1 >= argc) {
      std::fprintf(stderr, "usage: %s [--address HOST:PORT] [--run NAME] [--lr 0.01] [--epochs 100] [--seed 1] | --encode-fixtures\n", argv[0]);
      return 2;
    }
    std::string value = argv[++i];
    if (flag == "--address") address = value;
    else if (flag == "--run") run = value;
    else if (flag == "--lr") learning_rate = std::stod(value);
    else if (flag == "--epochs") epochs = std::stoi(value);
    else if (flag == "--seed") seed = std::stoul(value);
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (run.empty()) run = MakeRunName();
  return Train(address, run, learning_rate, epochs, static_cast<uint32_t>(seed));
}
