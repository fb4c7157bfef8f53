// Command gradserve-go-client is a gradserve.v1 client written from proto/ and
// docs/protocol.md alone: it creates its own training run (CreateRun, a linear model), fits
// y = 2x + 1 in it by sending batches to ComputeGradients and stepping with ApplyUpdate, reads
// the parameters back, then makes one malformed call on purpose to show what an error looks
// like (status code, message, BadRequest field violation).
//
//	gradserve-go-client [--address 127.0.0.1:50051] [--run NAME] [--lr 0.01] [--epochs 100] [--seed 1]
//	gradserve-go-client --encode-fixtures   (JSON of base64 Tensor messages, for the codec test)
//
// Every request names the run in its `run` field and in the `gradserve-run` metadata, which
// lets a proxy place runs on server replicas without reading bodies (docs/scaling.md). Without
// --run (or GRADSERVE_RUN) the name is made here (go-<random hex>).
//
// A server started with tokens wants `authorization: Bearer <token>` on every call: set
// GRADSERVE_TOKEN.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"time"

	gradservev1 "github.com/gradserve/gradserve/gen/go/gradserve/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

const (
	batchSize       = 10
	deadline        = 10 * time.Second
	maxMessageBytes = 64 * 1024 * 1024 // the server's default, in both directions
	runMetadata     = "gradserve-run"
)

// ---- The data every gradserve example makes (examples/node/data.js, bit for bit) -------------

// mulberry32: 32-bit state, uniform floats in [0, 1).
func mulberry32(seed uint32) func() float64 {
	state := seed
	return func() float64 {
		state += 0x6d2b79f5
		t := (state ^ (state >> 15)) * (state | 1)
		t ^= t + (t^(t>>7))*(t|61)
		return float64(t^(t>>14)) / 4294967296
	}
}

// makeData: count samples of float32 x in [0, 1) and y = 2x + 1 + 0.1·N(0, 1) (Box-Muller).
func makeData(seed uint32, count int) ([]float32, []float32) {
	random := mulberry32(seed)
	x := make([]float32, count)
	y := make([]float32, count)
	for i := range x {
		x[i] = float32(random())
	}
	for i := range y {
		u1 := 1 - random()
		u2 := random()
		noise := math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*u2)
		y[i] = float32(2*float64(x[i]) + 1 + 0.1*noise)
	}
	return x, y
}

// leastSquares: the (w, b) minimising the mean squared error over all samples.
func leastSquares(x, y []float32) (float64, float64) {
	n := float64(len(x))
	var sx, sy float64
	for i := range x {
		sx += float64(x[i])
		sy += float64(y[i])
	}
	mx, my := sx/n, sy/n
	var sxy, sxx float64
	for i := range x {
		sxy += (float64(x[i]) - mx) * (float64(y[i]) - my)
		sxx += (float64(x[i]) - mx) * (float64(x[i]) - mx)
	}
	w := sxy / sxx
	return w, my - w*mx
}

// ---- Tensors: row-major, fixed-width little-endian whatever the host's byte order ----------

func shapeOf(shape []int64) []int64 { return append([]int64{}, shape...) }

func float32Tensor(values []float32, shape []int64, name string) *gradservev1.Tensor {
	data := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	return &gradservev1.Tensor{Name: name, Dtype: gradservev1.DataType_DATA_TYPE_FLOAT32,
		Shape: shapeOf(shape), Data: data}
}

func float64Tensor(values []float64, shape []int64, name string) *gradservev1.Tensor {
	data := make([]byte, 8*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint64(data[8*i:], math.Float64bits(v))
	}
	return &gradservev1.Tensor{Name: name, Dtype: gradservev1.DataType_DATA_TYPE_FLOAT64,
		Shape: shapeOf(shape), Data: data}
}

func int64Tensor(values []int64, shape []int64, name string) *gradservev1.Tensor {
	data := make([]byte, 8*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint64(data[8*i:], uint64(v))
	}
	return &gradservev1.Tensor{Name: name, Dtype: gradservev1.DataType_DATA_TYPE_INT64,
		Shape: shapeOf(shape), Data: data}
}

func int32Tensor(values []int32, shape []int64, name string) *gradservev1.Tensor {
	data := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(data[4*i:], uint32(v))
	}
	return &gradservev1.Tensor{Name: name, Dtype: gradservev1.DataType_DATA_TYPE_INT32,
		Shape: shapeOf(shape), Data: data}
}

func boolTensor(values []bool, shape []int64, name string) *gradservev1.Tensor {
	data := make([]byte, len(values))
	for i, v := range values {
		if v {
			data[i] = 1
		}
	}
	return &gradservev1.Tensor{Name: name, Dtype: gradservev1.DataType_DATA_TYPE_BOOL,
		Shape: shapeOf(shape), Data: data}
}

// firstFloat32: the first element of a float32 tensor (the linear model's w and b are [1]).
func firstFloat32(tensor *gradservev1.Tensor) (float32, error) {
	if tensor.Dtype != gradservev1.DataType_DATA_TYPE_FLOAT32 || len(tensor.Data) < 4 {
		return 0, fmt.Errorf("%s: expected float32 data, got %v with %d bytes",
			tensor.Name, tensor.Dtype, len(tensor.Data))
	}
	return math.Float32frombits(binary.LittleEndian.Uint32(tensor.Data)), nil
}

// ---- Calls --------------------------------------------------------------------------------

// withDeadline: every call on run has a deadline, the run in the gradserve-run metadata (its
// request names it too), and the bearer token when there is one.
func withDeadline(run string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	ctx = metadata.AppendToOutgoingContext(ctx, runMetadata, run)
	if token := os.Getenv("GRADSERVE_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}
	return ctx, cancel
}

func train(client gradservev1.GradientServiceClient, run string, x, y []float32, lr float64,
	epochs int) error {
	for epoch := 1; epoch <= epochs; epoch++ {
		lossSum, batches := 0.0, 0
		for start := 0; start < len(x); start += batchSize {
			end := start + batchSize
			if end > len(x) {
				end = len(x)
			}
			rows := int64(end - start)
			request := &gradservev1.ComputeGradientsRequest{
				Run:     run,
				Inputs:  float32Tensor(x[start:end], []int64{rows, 1}, ""),
				Targets: float32Tensor(y[start:end], []int64{rows, 1}, ""),
			}
			ctx, cancel := withDeadline(run)
			result, err := client.ComputeGradients(ctx, request)
			if err == nil {
				_, err = client.ApplyUpdate(ctx,
					&gradservev1.ApplyUpdateRequest{Run: run, LearningRate: lr})
			}
			cancel()
			if err != nil {
				return err
			}
			lossSum += result.Loss
			batches++
		}
		if epoch%10 == 0 {
			fmt.Printf("Epoch %d, Loss: %.4f\n", epoch, lossSum/float64(batches))
		}
	}
	return nil
}

func readParameters(client gradservev1.GradientServiceClient, run string) (float32, float32,
	int64, error) {
	ctx, cancel := withDeadline(run)
	defer cancel()
	response, err := client.GetParameters(ctx, &gradservev1.GetParametersRequest{Run: run})
	if err != nil {
		return 0, 0, 0, err
	}
	values := map[string]float32{}
	for _, tensor := range response.Parameters {
		value, err := firstFloat32(tensor)
		if err != nil {
			return 0, 0, 0, err
		}
		values[tensor.Name] = value
	}
	return values["w"], values["b"], response.ModelVersion, nil
}

// showMalformedCall sends inputs four bytes short of the [2, 1] float32 shape they claim: the
// server must refuse them with INVALID_ARGUMENT and a BadRequest naming inputs.data.
func showMalformedCall(client gradservev1.GradientServiceClient, run string) bool {
	inputs := float32Tensor([]float32{1, 2}, []int64{2, 1}, "")
	inputs.Data = inputs.Data[:4]
	targets := float32Tensor([]float32{3, 5}, []int64{2, 1}, "")
	ctx, cancel := withDeadline(run)
	defer cancel()
	_, err := client.ComputeGradients(ctx,
		&gradservev1.ComputeGradientsRequest{Run: run, Inputs: inputs, Targets: targets})
	if err == nil {
		fmt.Println("Malformed call: unexpectedly accepted")
		return false
	}
	rejection := status.Convert(err)
	fmt.Printf("Malformed call: status=%s code=%d: %s\n", statusName(rejection.Code()),
		rejection.Code(), rejection.Message())
	// google.rpc.Status details, from the grpc-status-details-bin trailer.
	for _, detail := range rejection.Details() {
		if badRequest, ok := detail.(*errdetails.BadRequest); ok {
			for _, violation := range badRequest.FieldViolations {
				fmt.Printf("Field violation: field=%s description=%s\n", violation.Field,
					violation.Description)
			}
		}
	}
	return rejection.Code() == codes.InvalidArgument
}

// statusName: the canonical name (INVALID_ARGUMENT), as the other examples print it.
func statusName(code codes.Code) string {
	names := map[codes.Code]string{
		codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
		codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
		codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
		codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
		codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
		codes.Unauthenticated: "UNAUTHENTICATED",
	}
	if name, ok := names[code]; ok {
		return name
	}
	return code.String()
}

// ---- Codec fixtures --------------------------------------------------------------------------

// encodeFixtures prints the same names and values as examples/node/encode-fixtures.js (a
// subset of its dtypes), which tests/test_other_languages.py decodes with the Python codec.
func encodeFixtures() error {
	fixtures := map[string]*gradservev1.Tensor{
		"float32": float32Tensor([]float32{1.5, -2.25, 0.1, float32(math.Inf(1)),
			float32(math.Copysign(0, -1)), math.SmallestNonzeroFloat32}, []int64{2, 3}, "float32"),
		"float64": float64Tensor([]float64{0.1, -1e300, 5e-324, math.Inf(-1)}, []int64{4},
			"float64"),
		"int64": int64Tensor([]int64{0, -1, 9007199254740993, math.MinInt64, math.MaxInt64},
			[]int64{5}, "int64"),
		"int32": int32Tensor([]int32{math.MinInt32, math.MaxInt32, 7, -7}, []int64{2, 2},
			"int32"),
		"bool":           boolTensor([]bool{true, false, true, true}, []int64{2, 1, 2}, "bool"),
		"scalar_float32": float32Tensor([]float32{42.5}, []int64{}, "scalar_float32"),
		"empty_float32":  float32Tensor(nil, []int64{0, 3}, "empty_float32"),
	}
	out := map[string]string{}
	for name, tensor := range fixtures {
		bytes, err := proto.Marshal(tensor)
		if err != nil {
			return err
		}
		out[name] = base64.StdEncoding.EncodeToString(bytes)
	}
	text, err := json.Marshal(out)
	if err != nil {
		return err
	}
	fmt.Println(string(text))
	return nil
}

// ---- main ----------------------------------------------------------------------------------

// makeRunName: a run name of our own, so that even the CreateRun carries it for a proxy.
func makeRunName() (string, error) {
	random := make([]byte, 4)
	if _, err := rand.Read(random); err != nil {
		return "", err
	}
	return "go-" + hex.EncodeToString(random), nil
}

func run() (int, error) {
	defaultAddress := os.Getenv("GRADSERVE_ADDRESS")
	if defaultAddress == "" {
		defaultAddress = "127.0.0.1:50051"
	}
	address := flag.String("address", defaultAddress, "the server, host:port")
	runName := flag.String("run", os.Getenv("GRADSERVE_RUN"),
		"the run to create and train (default: go-<random hex>)")
	lr := flag.Float64("lr", 0.01, "learning rate")
	epochs := flag.Int("epochs", 100, "passes over the data")
	seed := flag.Uint("seed", 1, "seed of the data")
	fixtures := flag.Bool("encode-fixtures", false, "print the codec fixtures and exit")
	flag.Parse()
	if *fixtures {
		return 0, encodeFixtures()
	}

	// Plaintext, as the server serves by default (WithInsecure: what grpc-go 1.33, Debian's,
	// offers; newer ones also have credentials/insecure).
	connection, err := grpc.Dial(*address, grpc.WithInsecure(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes),
			grpc.MaxCallSendMsgSize(maxMessageBytes)))
	if err != nil {
		return 1, err
	}
	defer connection.Close()
	client := gradservev1.NewGradientServiceClient(connection)

	name := *runName
	if name == "" {
		if name, err = makeRunName(); err != nil {
			return 1, err
		}
	}
	ctx, cancel := withDeadline(name)
	created, err := client.CreateRun(ctx,
		&gradservev1.CreateRunRequest{Run: name, Model: "linear"})
	cancel()
	if err != nil {
		return 1, err
	}
	run, info := created.Run, created.Info
	fmt.Printf("Run: %s, model %s, optimizer %s, version %d\n", run, info.ModelSpec,
		info.Optimizer, info.ModelVersion)
	x, y := makeData(uint32(*seed), 100)
	fitW, fitB := leastSquares(x, y)
	fmt.Printf("Least squares: w=%.6f b=%.6f\n", fitW, fitB)

	if err := train(client, run, x, y, *lr, *epochs); err != nil {
		return 1, err
	}
	w, b, version, err := readParameters(client, run)
	if err != nil {
		return 1, err
	}
	fmt.Printf("Final: w=%.6f b=%.6f\n", w, b)
	fmt.Printf("GetParameters: w=%.6f b=%.6f version=%d\n", w, b, version)
	if !showMalformedCall(client, run) {
		return 1, nil
	}
	return 0, nil
}

func main() {
	code, err := run()
	if err != nil {
		rejection := status.Convert(err)
		fmt.Fprintf(os.Stderr, "gradserve client failed: %s: %s\n",
			statusName(rejection.Code()), rejection.Message())
		code = 1
	}
	os.Exit(code)
}
