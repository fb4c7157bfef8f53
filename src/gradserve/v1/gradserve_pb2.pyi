from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_BFLOAT16: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_BOOL: _ClassVar[DataType]
    DATA_TYPE_INT16: _ClassVar[DataType]
    DATA_TYPE_INT8: _ClassVar[DataType]

class Reduction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REDUCTION_UNSPECIFIED: _ClassVar[Reduction]
    REDUCTION_SUM: _ClassVar[Reduction]
    REDUCTION_MEAN: _ClassVar[Reduction]

class WeightedReduction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHTED_REDUCTION_UNSPECIFIED: _ClassVar[WeightedReduction]
    WEIGHTED_REDUCTION_SUM: _ClassVar[WeightedReduction]
    WEIGHTED_REDUCTION_MEAN: _ClassVar[WeightedReduction]
    WEIGHTED_REDUCTION_NORMALIZED: _ClassVar[WeightedReduction]

class GraphNodeKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRAPH_NODE_KIND_UNSPECIFIED: _ClassVar[GraphNodeKind]
    GRAPH_NODE_KIND_BACKWARD: _ClassVar[GraphNodeKind]
    GRAPH_NODE_KIND_PARAMETER: _ClassVar[GraphNodeKind]
    GRAPH_NODE_KIND_INPUT: _ClassVar[GraphNodeKind]

class StopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STOP_REASON_UNSPECIFIED: _ClassVar[StopReason]
    STOP_REASON_STOP_TOKEN: _ClassVar[StopReason]
    STOP_REASON_MAX_TOKENS: _ClassVar[StopReason]
    STOP_REASON_CANCELLED: _ClassVar[StopReason]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_BFLOAT16: DataType
DATA_TYPE_INT64: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_BOOL: DataType
DATA_TYPE_INT16: DataType
DATA_TYPE_INT8: DataType
REDUCTION_UNSPECIFIED: Reduction
REDUCTION_SUM: Reduction
REDUCTION_MEAN: Reduction
WEIGHTED_REDUCTION_UNSPECIFIED: WeightedReduction
WEIGHTED_REDUCTION_SUM: WeightedReduction
WEIGHTED_REDUCTION_MEAN: WeightedReduction
WEIGHTED_REDUCTION_NORMALIZED: WeightedReduction
GRAPH_NODE_KIND_UNSPECIFIED: GraphNodeKind
GRAPH_NODE_KIND_BACKWARD: GraphNodeKind
GRAPH_NODE_KIND_PARAMETER: GraphNodeKind
GRAPH_NODE_KIND_INPUT: GraphNodeKind
STOP_REASON_UNSPECIFIED: StopReason
STOP_REASON_STOP_TOKEN: StopReason
STOP_REASON_MAX_TOKENS: StopReason
STOP_REASON_CANCELLED: StopReason

class Tensor(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class LossSpec(_message.Message):
    __slots__ = ("name", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    options: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., options: _Optional[_Mapping[str, float]] = ...) -> None: ...

class LossInfo(_message.Message):
    __slots__ = ("name", "target", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: TensorSpec
    options: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., target: _Optional[_Union[TensorSpec, _Mapping]] = ..., options: _Optional[_Iterable[str]] = ...) -> None: ...

class ComputeGradientsRequest(_message.Message):
    __slots__ = ("inputs", "targets", "request_id", "return_gradients", "based_on_version", "run", "loss", "sample_weights", "weighted_reduction", "dataset", "logprobs", "advantages", "attention_mask", "seed")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RETURN_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    BASED_ON_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_REDUCTION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    inputs: Tensor
    targets: Tensor
    request_id: str
    return_gradients: bool
    based_on_version: int
    run: str
    loss: LossSpec
    sample_weights: Tensor
    weighted_reduction: WeightedReduction
    dataset: DatasetSlice
    logprobs: Tensor
    advantages: Tensor
    attention_mask: Tensor
    seed: int
    def __init__(self, inputs: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., request_id: _Optional[str] = ..., return_gradients: _Optional[bool] = ..., based_on_version: _Optional[int] = ..., run: _Optional[str] = ..., loss: _Optional[_Union[LossSpec, _Mapping]] = ..., sample_weights: _Optional[_Union[Tensor, _Mapping]] = ..., weighted_reduction: _Optional[_Union[WeightedReduction, str]] = ..., dataset: _Optional[_Union[DatasetSlice, _Mapping]] = ..., logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., advantages: _Optional[_Union[Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class DatasetSlice(_message.Message):
    __slots__ = ("dataset", "indices", "start", "count")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    start: int
    count: int
    def __init__(self, dataset: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ..., start: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ComputeGradientsResponse(_message.Message):
    __slots__ = ("loss", "batch_size", "accumulated_batches", "model_version", "gradients", "accumulated_samples")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    loss: float
    batch_size: int
    accumulated_batches: int
    model_version: int
    gradients: _containers.RepeatedCompositeFieldContainer[Tensor]
    accumulated_samples: int
    def __init__(self, loss: _Optional[float] = ..., batch_size: _Optional[int] = ..., accumulated_batches: _Optional[int] = ..., model_version: _Optional[int] = ..., gradients: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., accumulated_samples: _Optional[int] = ...) -> None: ...

class ApplyUpdateRequest(_message.Message):
    __slots__ = ("learning_rate", "request_id", "expected_version", "reduction", "run", "hyperparameters", "max_grad_norm")
    class HyperparametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    learning_rate: float
    request_id: str
    expected_version: int
    reduction: Reduction
    run: str
    hyperparameters: _containers.ScalarMap[str, float]
    max_grad_norm: float
    def __init__(self, learning_rate: _Optional[float] = ..., request_id: _Optional[str] = ..., expected_version: _Optional[int] = ..., reduction: _Optional[_Union[Reduction, str]] = ..., run: _Optional[str] = ..., hyperparameters: _Optional[_Mapping[str, float]] = ..., max_grad_norm: _Optional[float] = ...) -> None: ...

class ApplyUpdateResponse(_message.Message):
    __slots__ = ("model_version", "applied_batches", "gradient_norm", "applied_samples", "clipped")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NORM_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    applied_batches: int
    gradient_norm: float
    applied_samples: int
    clipped: bool
    def __init__(self, model_version: _Optional[int] = ..., applied_batches: _Optional[int] = ..., gradient_norm: _Optional[float] = ..., applied_samples: _Optional[int] = ..., clipped: _Optional[bool] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("inputs", "targets", "return_predictions", "run", "return_logprobs")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    RETURN_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    inputs: Tensor
    targets: Tensor
    return_predictions: bool
    run: str
    return_logprobs: bool
    def __init__(self, inputs: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., return_predictions: _Optional[bool] = ..., run: _Optional[str] = ..., return_logprobs: _Optional[bool] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("loss", "batch_size", "model_version", "predictions", "has_loss", "logprobs")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_LOSS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    loss: float
    batch_size: int
    model_version: int
    predictions: Tensor
    has_loss: bool
    logprobs: Tensor
    def __init__(self, loss: _Optional[float] = ..., batch_size: _Optional[int] = ..., model_version: _Optional[int] = ..., predictions: _Optional[_Union[Tensor, _Mapping]] = ..., has_loss: _Optional[bool] = ..., logprobs: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GetParametersRequest(_message.Message):
    __slots__ = ("names", "run", "include_buffers")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    run: str
    include_buffers: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., run: _Optional[str] = ..., include_buffers: _Optional[bool] = ...) -> None: ...

class GetParametersResponse(_message.Message):
    __slots__ = ("parameters", "model_version")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[Tensor]
    model_version: int
    def __init__(self, parameters: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., model_version: _Optional[int] = ...) -> None: ...

class SetParametersRequest(_message.Message):
    __slots__ = ("parameters", "request_id", "expected_version", "run")
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    parameters: _containers.RepeatedCompositeFieldContainer[Tensor]
    request_id: str
    expected_version: int
    run: str
    def __init__(self, parameters: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., request_id: _Optional[str] = ..., expected_version: _Optional[int] = ..., run: _Optional[str] = ...) -> None: ...

class SetParametersResponse(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    def __init__(self, model_version: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class GetModelInfoResponse(_message.Message):
    __slots__ = ("model", "model_spec", "parameters", "parameter_count", "input", "target", "loss", "optimizer", "model_version", "accumulated_batches", "accumulated_samples", "max_message_bytes", "max_batch_elements", "run", "buffers", "losses", "dataset_bytes_available", "base_model", "base_model_digest")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    DATASET_BYTES_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_spec: str
    parameters: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    parameter_count: int
    input: TensorSpec
    target: TensorSpec
    loss: str
    optimizer: str
    model_version: int
    accumulated_batches: int
    accumulated_samples: int
    max_message_bytes: int
    max_batch_elements: int
    run: str
    buffers: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    losses: _containers.RepeatedCompositeFieldContainer[LossInfo]
    dataset_bytes_available: int
    base_model: str
    base_model_digest: str
    def __init__(self, model: _Optional[str] = ..., model_spec: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., parameter_count: _Optional[int] = ..., input: _Optional[_Union[TensorSpec, _Mapping]] = ..., target: _Optional[_Union[TensorSpec, _Mapping]] = ..., loss: _Optional[str] = ..., optimizer: _Optional[str] = ..., model_version: _Optional[int] = ..., accumulated_batches: _Optional[int] = ..., accumulated_samples: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_batch_elements: _Optional[int] = ..., run: _Optional[str] = ..., buffers: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., losses: _Optional[_Iterable[_Union[LossInfo, _Mapping]]] = ..., dataset_bytes_available: _Optional[int] = ..., base_model: _Optional[str] = ..., base_model_digest: _Optional[str] = ...) -> None: ...

class DiscardGradientsRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class DiscardGradientsResponse(_message.Message):
    __slots__ = ("discarded_batches", "model_version")
    DISCARDED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    discarded_batches: int
    model_version: int
    def __init__(self, discarded_batches: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

class GraphNode(_message.Message):
    __slots__ = ("id", "kind", "name", "shape", "dtype", "requires_grad", "gradient")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_GRAD_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    id: int
    kind: GraphNodeKind
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    requires_grad: bool
    gradient: Tensor
    def __init__(self, id: _Optional[int] = ..., kind: _Optional[_Union[GraphNodeKind, str]] = ..., name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., requires_grad: _Optional[bool] = ..., gradient: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GraphEdge(_message.Message):
    __slots__ = ("from_id", "to_id", "slot", "carries_gradient")
    FROM_ID_FIELD_NUMBER: _ClassVar[int]
    TO_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    CARRIES_GRADIENT_FIELD_NUMBER: _ClassVar[int]
    from_id: int
    to_id: int
    slot: int
    carries_gradient: bool
    def __init__(self, from_id: _Optional[int] = ..., to_id: _Optional[int] = ..., slot: _Optional[int] = ..., carries_gradient: _Optional[bool] = ...) -> None: ...

class DescribeGraphRequest(_message.Message):
    __slots__ = ("inputs", "targets", "return_gradients", "max_nodes", "run")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    RETURN_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    inputs: Tensor
    targets: Tensor
    return_gradients: bool
    max_nodes: int
    run: str
    def __init__(self, inputs: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., return_gradients: _Optional[bool] = ..., max_nodes: _Optional[int] = ..., run: _Optional[str] = ...) -> None: ...

class DescribeGraphResponse(_message.Message):
    __slots__ = ("nodes", "edges", "root_id", "loss", "model_version", "batch_size", "max_nodes")
    NODES_FIELD_NUMBER: _ClassVar[int]
    EDGES_FIELD_NUMBER: _ClassVar[int]
    ROOT_ID_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[GraphNode]
    edges: _containers.RepeatedCompositeFieldContainer[GraphEdge]
    root_id: int
    loss: float
    model_version: int
    batch_size: int
    max_nodes: int
    def __init__(self, nodes: _Optional[_Iterable[_Union[GraphNode, _Mapping]]] = ..., edges: _Optional[_Iterable[_Union[GraphEdge, _Mapping]]] = ..., root_id: _Optional[int] = ..., loss: _Optional[float] = ..., model_version: _Optional[int] = ..., batch_size: _Optional[int] = ..., max_nodes: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("inputs", "targets", "loss", "sample_weights", "weighted_reduction", "dataset", "logprobs", "advantages", "attention_mask")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_REDUCTION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    ATTENTION_MASK_FIELD_NUMBER: _ClassVar[int]
    inputs: Tensor
    targets: Tensor
    loss: LossSpec
    sample_weights: Tensor
    weighted_reduction: WeightedReduction
    dataset: DatasetSlice
    logprobs: Tensor
    advantages: Tensor
    attention_mask: Tensor
    def __init__(self, inputs: _Optional[_Union[Tensor, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., loss: _Optional[_Union[LossSpec, _Mapping]] = ..., sample_weights: _Optional[_Union[Tensor, _Mapping]] = ..., weighted_reduction: _Optional[_Union[WeightedReduction, str]] = ..., dataset: _Optional[_Union[DatasetSlice, _Mapping]] = ..., logprobs: _Optional[_Union[Tensor, _Mapping]] = ..., advantages: _Optional[_Union[Tensor, _Mapping]] = ..., attention_mask: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class TrainStep(_message.Message):
    __slots__ = ("batches", "apply_update", "learning_rate", "reduction", "expected_version", "hyperparameters", "max_grad_norm", "seed")
    class HyperparametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    APPLY_UPDATE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[Batch]
    apply_update: bool
    learning_rate: float
    reduction: Reduction
    expected_version: int
    hyperparameters: _containers.ScalarMap[str, float]
    max_grad_norm: float
    seed: int
    def __init__(self, batches: _Optional[_Iterable[_Union[Batch, _Mapping]]] = ..., apply_update: _Optional[bool] = ..., learning_rate: _Optional[float] = ..., reduction: _Optional[_Union[Reduction, str]] = ..., expected_version: _Optional[int] = ..., hyperparameters: _Optional[_Mapping[str, float]] = ..., max_grad_norm: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("steps", "request_id", "run", "dataset_pass")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    DATASET_PASS_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[TrainStep]
    request_id: str
    run: str
    dataset_pass: DatasetPass
    def __init__(self, steps: _Optional[_Iterable[_Union[TrainStep, _Mapping]]] = ..., request_id: _Optional[str] = ..., run: _Optional[str] = ..., dataset_pass: _Optional[_Union[DatasetPass, _Mapping]] = ...) -> None: ...

class DatasetPass(_message.Message):
    __slots__ = ("dataset", "indices", "start", "count", "batch_size", "learning_rate", "reduction", "hyperparameters", "max_grad_norm", "expected_version", "gradient_norms", "seed")
    class HyperparametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    REDUCTION_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NORMS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    start: int
    count: int
    batch_size: int
    learning_rate: float
    reduction: Reduction
    hyperparameters: _containers.ScalarMap[str, float]
    max_grad_norm: float
    expected_version: int
    gradient_norms: bool
    seed: int
    def __init__(self, dataset: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ..., start: _Optional[int] = ..., count: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., reduction: _Optional[_Union[Reduction, str]] = ..., hyperparameters: _Optional[_Mapping[str, float]] = ..., max_grad_norm: _Optional[float] = ..., expected_version: _Optional[int] = ..., gradient_norms: _Optional[bool] = ..., seed: _Optional[int] = ...) -> None: ...

class PassResult(_message.Message):
    __slots__ = ("losses", "gradient_norms", "model_version", "clipped")
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NORMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    losses: _containers.RepeatedScalarFieldContainer[float]
    gradient_norms: _containers.RepeatedScalarFieldContainer[float]
    model_version: int
    clipped: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, losses: _Optional[_Iterable[float]] = ..., gradient_norms: _Optional[_Iterable[float]] = ..., model_version: _Optional[int] = ..., clipped: _Optional[_Iterable[bool]] = ...) -> None: ...

class StepResult(_message.Message):
    __slots__ = ("losses", "model_version", "accumulated_batches", "applied", "applied_batches", "gradient_norm", "clipped")
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NORM_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_FIELD_NUMBER: _ClassVar[int]
    losses: _containers.RepeatedScalarFieldContainer[float]
    model_version: int
    accumulated_batches: int
    applied: bool
    applied_batches: int
    gradient_norm: float
    clipped: bool
    def __init__(self, losses: _Optional[_Iterable[float]] = ..., model_version: _Optional[int] = ..., accumulated_batches: _Optional[int] = ..., applied: _Optional[bool] = ..., applied_batches: _Optional[int] = ..., gradient_norm: _Optional[float] = ..., clipped: _Optional[bool] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("steps", "request_id", "pass_result")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PASS_RESULT_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[StepResult]
    request_id: str
    pass_result: PassResult
    def __init__(self, steps: _Optional[_Iterable[_Union[StepResult, _Mapping]]] = ..., request_id: _Optional[str] = ..., pass_result: _Optional[_Union[PassResult, _Mapping]] = ...) -> None: ...

class StreamParametersRequest(_message.Message):
    __slots__ = ("names", "chunk_bytes", "run", "include_buffers")
    NAMES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    chunk_bytes: int
    run: str
    include_buffers: bool
    def __init__(self, names: _Optional[_Iterable[str]] = ..., chunk_bytes: _Optional[int] = ..., run: _Optional[str] = ..., include_buffers: _Optional[bool] = ...) -> None: ...

class StreamParametersResponse(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "data", "model_version", "expected_version", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    model_version: int
    expected_version: int
    request_id: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., model_version: _Optional[int] = ..., expected_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class UploadParametersRequest(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "data", "model_version", "expected_version", "request_id", "run")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    model_version: int
    expected_version: int
    request_id: str
    run: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., model_version: _Optional[int] = ..., expected_version: _Optional[int] = ..., request_id: _Optional[str] = ..., run: _Optional[str] = ...) -> None: ...

class UploadParametersResponse(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    def __init__(self, model_version: _Optional[int] = ...) -> None: ...

class ParameterChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "data", "model_version", "expected_version", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    model_version: int
    expected_version: int
    request_id: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., model_version: _Optional[int] = ..., expected_version: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class SaveCheckpointRequest(_message.Message):
    __slots__ = ("run", "name")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    run: str
    name: str
    def __init__(self, run: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SaveCheckpointResponse(_message.Message):
    __slots__ = ("name", "model_version", "accumulated_batches", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_version: int
    accumulated_batches: int
    digest: str
    def __init__(self, name: _Optional[str] = ..., model_version: _Optional[int] = ..., accumulated_batches: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("run", "model", "loss", "optimizer", "seed", "from_checkpoint", "with_optimizer_state", "request_id", "base_model", "lora")
    RUN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FROM_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    WITH_OPTIMIZER_STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    run: str
    model: str
    loss: str
    optimizer: str
    seed: int
    from_checkpoint: str
    with_optimizer_state: bool
    request_id: str
    base_model: str
    lora: LoraSpec
    def __init__(self, run: _Optional[str] = ..., model: _Optional[str] = ..., loss: _Optional[str] = ..., optimizer: _Optional[str] = ..., seed: _Optional[int] = ..., from_checkpoint: _Optional[str] = ..., with_optimizer_state: _Optional[bool] = ..., request_id: _Optional[str] = ..., base_model: _Optional[str] = ..., lora: _Optional[_Union[LoraSpec, _Mapping]] = ...) -> None: ...

class LoraSpec(_message.Message):
    __slots__ = ("rank", "alpha", "target_modules", "dropout")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    rank: int
    alpha: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    dropout: float
    def __init__(self, rank: _Optional[int] = ..., alpha: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ..., dropout: _Optional[float] = ...) -> None: ...

class CreateRunResponse(_message.Message):
    __slots__ = ("run", "info")
    RUN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    run: str
    info: GetModelInfoResponse
    def __init__(self, run: _Optional[str] = ..., info: _Optional[_Union[GetModelInfoResponse, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunSummary(_message.Message):
    __slots__ = ("run", "model_spec", "optimizer", "model_version", "loaded", "parameter_bytes", "base_model", "base_model_digest", "owner")
    RUN_FIELD_NUMBER: _ClassVar[int]
    MODEL_SPEC_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_BYTES_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    run: str
    model_spec: str
    optimizer: str
    model_version: int
    loaded: bool
    parameter_bytes: int
    base_model: str
    base_model_digest: str
    owner: str
    def __init__(self, run: _Optional[str] = ..., model_spec: _Optional[str] = ..., optimizer: _Optional[str] = ..., model_version: _Optional[int] = ..., loaded: _Optional[bool] = ..., parameter_bytes: _Optional[int] = ..., base_model: _Optional[str] = ..., base_model_digest: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunSummary]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunSummary, _Mapping]]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("summary", "owner", "base_model", "checkpoints", "datasets", "dataset_bytes", "loss")
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    DATASET_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    summary: RunSummary
    owner: str
    base_model: str
    checkpoints: int
    datasets: int
    dataset_bytes: int
    loss: str
    def __init__(self, summary: _Optional[_Union[RunSummary, _Mapping]] = ..., owner: _Optional[str] = ..., base_model: _Optional[str] = ..., checkpoints: _Optional[int] = ..., datasets: _Optional[int] = ..., dataset_bytes: _Optional[int] = ..., loss: _Optional[str] = ...) -> None: ...

class DeleteRunRequest(_message.Message):
    __slots__ = ("run", "delete_checkpoints")
    RUN_FIELD_NUMBER: _ClassVar[int]
    DELETE_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    run: str
    delete_checkpoints: bool
    def __init__(self, run: _Optional[str] = ..., delete_checkpoints: _Optional[bool] = ...) -> None: ...

class DeleteRunResponse(_message.Message):
    __slots__ = ("deleted_checkpoints",)
    DELETED_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    deleted_checkpoints: int
    def __init__(self, deleted_checkpoints: _Optional[int] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class CheckpointSummary(_message.Message):
    __slots__ = ("name", "model_version", "accumulated_batches", "digest", "saved_at")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SAVED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    model_version: int
    accumulated_batches: int
    digest: str
    saved_at: float
    def __init__(self, name: _Optional[str] = ..., model_version: _Optional[int] = ..., accumulated_batches: _Optional[int] = ..., digest: _Optional[str] = ..., saved_at: _Optional[float] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointSummary]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[CheckpointSummary, _Mapping]]] = ...) -> None: ...

class LoadCheckpointRequest(_message.Message):
    __slots__ = ("run", "name", "with_optimizer_state", "request_id")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    WITH_OPTIMIZER_STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run: str
    name: str
    with_optimizer_state: bool
    request_id: str
    def __init__(self, run: _Optional[str] = ..., name: _Optional[str] = ..., with_optimizer_state: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class LoadCheckpointResponse(_message.Message):
    __slots__ = ("model_version", "checkpoint_version", "restored_parameters", "restored_buffers", "restored_optimizer_state", "discarded_batches", "digest")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTORED_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    RESTORED_BUFFERS_FIELD_NUMBER: _ClassVar[int]
    RESTORED_OPTIMIZER_STATE_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    checkpoint_version: int
    restored_parameters: int
    restored_buffers: int
    restored_optimizer_state: bool
    discarded_batches: int
    digest: str
    def __init__(self, model_version: _Optional[int] = ..., checkpoint_version: _Optional[int] = ..., restored_parameters: _Optional[int] = ..., restored_buffers: _Optional[int] = ..., restored_optimizer_state: _Optional[bool] = ..., discarded_batches: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class DeleteCheckpointRequest(_message.Message):
    __slots__ = ("run", "name")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    run: str
    name: str
    def __init__(self, run: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteCheckpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStateDigestRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class GetStateDigestResponse(_message.Message):
    __slots__ = ("digest", "model_version")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    digest: str
    model_version: int
    def __init__(self, digest: _Optional[str] = ..., model_version: _Optional[int] = ...) -> None: ...

class ComputeOutputsRequest(_message.Message):
    __slots__ = ("run", "inputs", "request_id")
    RUN_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run: str
    inputs: Tensor
    request_id: str
    def __init__(self, run: _Optional[str] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class ComputeOutputsResponse(_message.Message):
    __slots__ = ("handle", "outputs", "model_version", "expires_in_seconds", "batch_size")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    outputs: Tensor
    model_version: int
    expires_in_seconds: float
    batch_size: int
    def __init__(self, handle: _Optional[str] = ..., outputs: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[int] = ..., expires_in_seconds: _Optional[float] = ..., batch_size: _Optional[int] = ...) -> None: ...

class BackwardOutputsRequest(_message.Message):
    __slots__ = ("run", "handle", "output_gradients", "loss", "request_id", "based_on_version")
    RUN_FIELD_NUMBER: _ClassVar[int]
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BASED_ON_VERSION_FIELD_NUMBER: _ClassVar[int]
    run: str
    handle: str
    output_gradients: Tensor
    loss: float
    request_id: str
    based_on_version: int
    def __init__(self, run: _Optional[str] = ..., handle: _Optional[str] = ..., output_gradients: _Optional[_Union[Tensor, _Mapping]] = ..., loss: _Optional[float] = ..., request_id: _Optional[str] = ..., based_on_version: _Optional[int] = ...) -> None: ...

class BackwardOutputsResponse(_message.Message):
    __slots__ = ("loss", "batch_size", "accumulated_batches", "model_version", "accumulated_samples")
    LOSS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    loss: float
    batch_size: int
    accumulated_batches: int
    model_version: int
    accumulated_samples: int
    def __init__(self, loss: _Optional[float] = ..., batch_size: _Optional[int] = ..., accumulated_batches: _Optional[int] = ..., model_version: _Optional[int] = ..., accumulated_samples: _Optional[int] = ...) -> None: ...

class UploadDatasetRequest(_message.Message):
    __slots__ = ("run", "name", "inputs", "targets", "replace", "digest", "data")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    run: str
    name: str
    inputs: TensorSpec
    targets: TensorSpec
    replace: bool
    digest: str
    data: bytes
    def __init__(self, run: _Optional[str] = ..., name: _Optional[str] = ..., inputs: _Optional[_Union[TensorSpec, _Mapping]] = ..., targets: _Optional[_Union[TensorSpec, _Mapping]] = ..., replace: _Optional[bool] = ..., digest: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "samples", "inputs", "targets", "bytes", "digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    samples: int
    inputs: TensorSpec
    targets: TensorSpec
    bytes: int
    digest: str
    def __init__(self, name: _Optional[str] = ..., samples: _Optional[int] = ..., inputs: _Optional[_Union[TensorSpec, _Mapping]] = ..., targets: _Optional[_Union[TensorSpec, _Mapping]] = ..., bytes: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class UploadDatasetResponse(_message.Message):
    __slots__ = ("dataset", "unchanged", "replaced")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    dataset: DatasetInfo
    unchanged: bool
    replaced: bool
    def __init__(self, dataset: _Optional[_Union[DatasetInfo, _Mapping]] = ..., unchanged: _Optional[bool] = ..., replaced: _Optional[bool] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: str
    def __init__(self, run: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "dataset_bytes_available")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    DATASET_BYTES_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    dataset_bytes_available: int
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ..., dataset_bytes_available: _Optional[int] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("run", "name")
    RUN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    run: str
    name: str
    def __init__(self, run: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ("released_bytes",)
    RELEASED_BYTES_FIELD_NUMBER: _ClassVar[int]
    released_bytes: int
    def __init__(self, released_bytes: _Optional[int] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("run", "prompt_tokens", "num_samples", "max_tokens", "temperature", "top_k", "top_p", "stop_token_ids", "seed", "prompt_logprobs", "checkpoint")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    run: str
    prompt_tokens: _containers.RepeatedScalarFieldContainer[int]
    num_samples: int
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    seed: int
    prompt_logprobs: bool
    checkpoint: str
    def __init__(self, run: _Optional[str] = ..., prompt_tokens: _Optional[_Iterable[int]] = ..., num_samples: _Optional[int] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., seed: _Optional[int] = ..., prompt_logprobs: _Optional[bool] = ..., checkpoint: _Optional[str] = ...) -> None: ...

class SampleStop(_message.Message):
    __slots__ = ("sample", "reason")
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    sample: int
    reason: StopReason
    def __init__(self, sample: _Optional[int] = ..., reason: _Optional[_Union[StopReason, str]] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("model_version", "prompt_logprobs", "step", "samples", "tokens", "logprobs", "finished")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    prompt_logprobs: _containers.RepeatedScalarFieldContainer[float]
    step: int
    samples: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    finished: _containers.RepeatedCompositeFieldContainer[SampleStop]
    def __init__(self, model_version: _Optional[int] = ..., prompt_logprobs: _Optional[_Iterable[float]] = ..., step: _Optional[int] = ..., samples: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., finished: _Optional[_Iterable[_Union[SampleStop, _Mapping]]] = ...) -> None: ...
