// A gradserve.v1 client in Go; see README.md. The gradserve.v1 package is generated from
// proto/ by protoc-gen-go and protoc-gen-go-grpc into gen/ (git-ignored), under the import
// path the proto's go_package names; `go mod tidy` adds grpc, protobuf and genproto.
module github.com/gradserve/gradserve/examples/go

go 1.19

require github.com/gradserve/gradserve/gen/go v0.0.0

replace github.com/gradserve/gradserve/gen/go => ./gen/github.com/gradserve/gradserve/gen/go
