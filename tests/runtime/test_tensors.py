import numpy as np
import pytest

from driftlm.services.core.errors import InvalidArgumentError, ResourceExhaustedError
from driftlm.services.runtime.errors import to_status
from driftlm.services.runtime.tensors import array_to_tensor, chunk_requests, collect_stream, tensor_to_array
from driftlm.v1 import common_pb2, sampling_pb2


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.float16, np.uint8])
@pytest.mark.parametrize("shape", [(0,), (3,), (2, 5), (2, 0, 3)])
def test_round_trip(dtype: type, shape: tuple[int, ...]) -> None:
    array = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape)
    back = tensor_to_array(array_to_tensor(array), "x")
    assert back.dtype == array.dtype and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_big_endian_and_strided_arrays_travel_as_little_endian() -> None:
    array = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    tensor = array_to_tensor(array)
    assert tensor.data == np.ascontiguousarray(array, dtype="<f4").tobytes()
    np.testing.assert_array_equal(tensor_to_array(tensor, "x"), array)


def test_unsupported_dtype() -> None:
    with pytest.raises(ValueError, match="dtype complex128 cannot travel as a Tensor"):
        array_to_tensor(np.ones(2, dtype=np.complex128))


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        # (tensor, exact message)
        (
            common_pb2.Tensor(shape=[1], data=b"\0" * 4),
            "x.dtype: must be one of D_TYPE_FLOAT32, D_TYPE_FLOAT64, D_TYPE_INT32, D_TYPE_INT64, D_TYPE_FLOAT16, D_TYPE_UINT8, got 0",
        ),
        (
            common_pb2.Tensor(dtype=common_pb2.D_TYPE_FLOAT32, shape=[2, 3], data=b"\0" * 20),
            "x.data: has 20 bytes but shape [2, 3] of D_TYPE_FLOAT32 needs 24",
        ),
        (
            common_pb2.Tensor(dtype=common_pb2.D_TYPE_INT64, shape=[-1], data=b""),
            "x.shape: dimensions must be >= 0, got [-1]",
        ),
    ],
)
def test_malformed_tensor(tensor: common_pb2.Tensor, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        tensor_to_array(tensor, "x")
    assert raised.value.message == message


def test_chunked_stream_reassembles_every_field() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 9, 1000)
    token_ids = rng.integers(0, 50, int(lengths.sum())).astype(np.int32)
    shift = rng.random(50).astype(np.float32)
    messages = list(
        chunk_requests(
            sampling_pb2.SelectSentencesRequest,
            {"k": 5, "seed": 3},
            {"candidate_lengths": lengths, "candidate_token_ids": token_ids, "token_shift": shift, "losses": None},
            chunk_bytes=512,
        )
    )
    assert len(messages) > 2 and messages[0].k == 5 and messages[1].k == 0
    first, arrays = collect_stream(
        messages, ("candidate_lengths", "candidate_token_ids", "token_shift", "losses"), max_bytes=1 << 20
    )
    assert first.seed == 3
    np.testing.assert_array_equal(arrays["candidate_lengths"], lengths)
    np.testing.assert_array_equal(arrays["candidate_token_ids"], token_ids)
    np.testing.assert_array_equal(arrays["token_shift"], shift)
    assert arrays["losses"] is None


def test_chunks_must_agree_on_dtype_and_trailing_shape() -> None:
    messages = [
        sampling_pb2.ComputeCosineDistanceRequest(old_rows=array_to_tensor(np.ones((2, 3), np.float32))),
        sampling_pb2.ComputeCosineDistanceRequest(old_rows=array_to_tensor(np.ones((2, 4), np.float32))),
    ]
    with pytest.raises(InvalidArgumentError) as raised:
        collect_stream(messages, ("old_rows",), max_bytes=1 << 20)
    assert raised.value.message == (
        "old_rows: chunk 2 is float32 [2, 4] but the first chunk was float32 [2, 3]; chunks may differ only in their first dimension"
    )


def test_empty_stream_and_size_limit() -> None:
    with pytest.raises(InvalidArgumentError, match="the request stream carried no messages"):
        collect_stream(iter([]), ("weights",), max_bytes=10)
    big = sampling_pb2.DrawSampleRequest(weights=array_to_tensor(np.ones(100)))
    with pytest.raises(ResourceExhaustedError, match="more than 100 bytes of tensors"):
        collect_stream([big, big], ("weights",), max_bytes=100)


def test_long_error_messages_are_cut_to_fit_in_trailers() -> None:
    from driftlm.services.core.errors import MAX_MESSAGE_CHARS

    error = InvalidArgumentError("field", "x" * 20_000)
    assert len(error.message) <= MAX_MESSAGE_CHARS and error.message.endswith(" ... (cut off)")
    assert len(to_status(error).SerializeToString()) < 16_384
