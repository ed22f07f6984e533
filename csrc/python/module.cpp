// gradcomp._C: the stateful C++ objects the Python hook drives. Importing it also registers
// torch.ops.gradcomp.* (the op objects are linked into this module).
#include <torch/extension.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "compressors/bucket_codec.h"
#include "compressors/cuda_kernels.h"
#include "compressors/error_feedback.h"
#include "compressors/powersgd.h"
#include "compressors/registry.h"
#include "compressors/topk_compressor.h"

namespace py = pybind11;

namespace gradcomp {
namespace {

at::Tensor new_payload(const Compressor& c, int64_t numel, const at::Device& device) {
  return at::empty({c.payload_numel(numel)},
                   at::TensorOptions().dtype(c.payload_dtype()).device(device));
}

CompressContext context(int64_t step, uint64_t seed, uint64_t tensor_key, int64_t rank) {
  return {seed, step, tensor_key, rank, 1.0};
}

// None means "no error feedback" (pybind11 does not map None to a null shared_ptr here).
std::shared_ptr<ErrorFeedback> optional_feedback(const py::object& object) {
  return object.is_none() ? nullptr : object.cast<std::shared_ptr<ErrorFeedback>>();
}

// (name, offset, numel, compress, rows[, method]) per parameter.
std::vector<BucketEntry> to_entries(const std::vector<py::tuple>& entries) {
  std::vector<BucketEntry> list;
  list.reserve(entries.size());
  for (const auto& t : entries) {
    TORCH_CHECK_VALUE(t.size() == 5 || t.size() == 6,
                      "a bucket entry is (name, offset, numel, compress, rows[, method]), got a "
                      "tuple of ",
                      t.size());
    BucketEntry entry{t[0].cast<std::string>(), t[1].cast<int64_t>(), t[2].cast<int64_t>(),
                      t[3].cast<bool>(), t[4].cast<int64_t>()};
    if (t.size() == 6) entry.method = t[5].cast<int64_t>();
    list.push_back(std::move(entry));
  }
  return list;
}

// A Compressor, or a list of them (one per override), as the codec's method list.
std::vector<std::shared_ptr<const Compressor>> to_methods(const py::object& object) {
  std::vector<std::shared_ptr<const Compressor>> methods;
  if (py::isinstance<py::list>(object) || py::isinstance<py::tuple>(object)) {
    for (const auto& item : object) methods.push_back(item.cast<std::shared_ptr<Compressor>>());
  } else {
    methods.push_back(object.cast<std::shared_ptr<Compressor>>());
  }
  return methods;
}

py::tuple measure_tuple(const CodecMeasure& m) { return py::make_tuple(m.input_sq, m.error_sq); }

}  // namespace
}  // namespace gradcomp

PYBIND11_MODULE(_C, m) {
  using namespace gradcomp;
  m.doc() = "gradcomp native core: compressors, error feedback, bucket codecs";

  // TORCH_CHECK_VALUE / _TYPE / _INDEX become ValueError / TypeError / IndexError.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
    } catch (const c10::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });

  m.def("compressor_names", &compressor_names, "Registered compressor names, sorted.");
  m.def("has_cuda_kernels", &has_cuda_kernels,
        "True when this build has the CUDA backend (nvcc compiled the CUDA kernels).");
  m.def("all_finite", &all_finite, py::arg("values"),
        "True when every element is finite: the check the bucket codecs run before encoding.",
        py::call_guard<py::gil_scoped_release>());
  m.def("parameter_key", &parameter_key, py::arg("name"),
        "The per-parameter RNG key gradcomp derives from a parameter name.");

  py::class_<CompressionMethod, std::shared_ptr<CompressionMethod>>(m, "CompressionMethod")
      .def_property_readonly("name", &CompressionMethod::name)
      .def_property_readonly("spec", &CompressionMethod::spec)
      .def_property_readonly(
          "collective", [](const CompressionMethod& c) { return collective_name(c.collective()); })
      .def_property_readonly("lossless", &CompressionMethod::lossless)
      .def("__repr__", [](const CompressionMethod& c) {
        return "<gradcomp._C." + std::string(c.name() == "powersgd" ? "PowerSgd" : "Compressor") +
               " " + c.spec() + ">";
      });

  py::class_<Compressor, CompressionMethod, std::shared_ptr<Compressor>>(m, "Compressor")
      .def_property_readonly("payload_dtype", [](const Compressor& c) { return c.payload_dtype(); })
      .def_property_readonly("variable_size", &Compressor::variable_size)
      .def("payload_numel", &Compressor::payload_numel, py::arg("numel"))
      .def("payload_bytes", &Compressor::payload_bytes, py::arg("numel"))
      .def(
          "compress",
          [](const Compressor& c, const at::Tensor& input, int64_t step, uint64_t seed,
             uint64_t tensor_key, int64_t rank) {
            auto payload = new_payload(c, input.numel(), input.device());
            const int64_t used = c.compress(input, payload, context(step, seed, tensor_key, rank));
            return used == payload.numel() ? payload : payload.narrow(0, 0, used).clone();
          },
          py::arg("input"), py::arg("step") = 0, py::arg("seed") = 0, py::arg("tensor_key") = 0,
          py::arg("rank") = 0, "The payload of a flat float32 tensor.",
          py::call_guard<py::gil_scoped_release>())
      .def(
          "compress_with_feedback",
          [](const Compressor& c, const at::Tensor& grad, const at::Tensor& residual, int64_t step,
             uint64_t seed, uint64_t tensor_key, int64_t rank) {
            auto payload = new_payload(c, grad.numel(), grad.device());
            const int64_t used = c.compress_with_feedback(grad, residual, payload,
                                                          context(step, seed, tensor_key, rank));
            return used == payload.numel() ? payload : payload.narrow(0, 0, used).clone();
          },
          py::arg("grad"), py::arg("residual"), py::arg("step") = 0, py::arg("seed") = 0,
          py::arg("tensor_key") = 0, py::arg("rank") = 0,
          "residual += grad; payload = C(residual); residual -= D(payload). Returns payload.",
          py::call_guard<py::gil_scoped_release>())
      .def(
          "decompress",
          [](const Compressor& c, const at::Tensor& payload, int64_t numel, int64_t step,
             uint64_t seed, uint64_t tensor_key) {
            auto out = at::zeros({numel}, payload.options().dtype(at::kFloat));
            c.decompress_add(payload, out, context(step, seed, tensor_key, 0));
            return out;
          },
          py::arg("payload"), py::arg("numel"), py::arg("step") = 0, py::arg("seed") = 0,
          py::arg("tensor_key") = 0, "A new flat float32 tensor D(payload).",
          py::call_guard<py::gil_scoped_release>())
      .def(
          "decompress_add",
          [](const Compressor& c, const at::Tensor& payload, const at::Tensor& out, int64_t step,
             uint64_t seed, uint64_t tensor_key) {
            return c.decompress_add(payload, out, context(step, seed, tensor_key, 0));
          },
          py::arg("payload"), py::arg("out"), py::arg("step") = 0, py::arg("seed") = 0,
          py::arg("tensor_key") = 0, "out += D(payload); returns the payload elements read.",
          py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("threshold_misses", [](const Compressor& c) -> int64_t {
        const auto* topk = dynamic_cast<const TopKCompressor*>(&c);
        return topk != nullptr ? topk->threshold_misses() : 0;
      });

  py::class_<PowerSgd, CompressionMethod, std::shared_ptr<PowerSgd>>(m, "PowerSgd")
      .def_property_readonly("rank", &PowerSgd::rank)
      .def_property_readonly("min_compression", &PowerSgd::min_compression)
      .def("rank_for", &PowerSgd::rank_for, py::arg("rows"), py::arg("cols"));

  m.def(
      "make_compressor",
      [](const std::string& name, const std::map<std::string, double>& options) -> py::object {
        // pybind11 only downcasts to the exact dynamic type, and the concrete classes are not
        // bound: hand out the interface the object implements.
        auto method = std::const_pointer_cast<CompressionMethod>(make_method(name, options));
        if (auto compressor = std::dynamic_pointer_cast<Compressor>(method)) {
          return py::cast(compressor);
        }
        if (auto powersgd = std::dynamic_pointer_cast<PowerSgd>(method)) return py::cast(powersgd);
        return py::cast(method);
      },
      py::arg("name"), py::arg("options") = std::map<std::string, double>{},
      "The named method: a Compressor, or a PowerSgd for 'powersgd'.");

  py::class_<ErrorFeedback, std::shared_ptr<ErrorFeedback>>(m, "ErrorFeedback")
      .def(py::init<>())
      .def("__len__", &ErrorFeedback::size)
      .def(
          "residual",
          [](ErrorFeedback& self, const std::string& name, int64_t numel,
             const at::Device& device) { return self.residual(self.slot(name, numel), device); },
          py::arg("name"), py::arg("numel"), py::arg("device"),
          "The live fp32 tensor of `name` (zero on first use, moved to `device`): writes to it "
          "change the stored state.")
      .def("squared_norm", &ErrorFeedback::squared_norm)
      .def("scale", &ErrorFeedback::scale, py::arg("factor"),
           "Multiplies every residual by factor (a loss-scale change).")
      .def("state_dict", &ErrorFeedback::state_dict)
      .def("load_state_dict", &ErrorFeedback::load_state_dict, py::arg("state"))
      .def("reset", &ErrorFeedback::reset);

  py::class_<BucketCodec, std::shared_ptr<BucketCodec>>(m, "BucketCodec")
      .def(py::init([](const py::object& compressors, const std::vector<py::tuple>& entries,
                       const py::object& error_feedback, uint64_t seed, int64_t rank,
                       int64_t world_size) {
             return std::make_shared<BucketCodec>(to_methods(compressors), to_entries(entries),
                                                  optional_feedback(error_feedback), seed, rank,
                                                  world_size);
           }),
           py::arg("compressors"), py::arg("entries"), py::arg("error_feedback"), py::arg("seed"),
           py::arg("rank") = 0, py::arg("world_size") = 1,
           "compressors: a Compressor or a list; entries: (name, offset, numel, compress, rows[, "
           "method]) per parameter, in bucket order; method indexes the list.")
      .def_property_readonly(
          "channels",
          [](const BucketCodec& codec) {
            std::vector<std::tuple<std::string, at::ScalarType, int64_t, bool>> out;
            for (const auto& ch : codec.channels()) {
              out.emplace_back(collective_name(ch.collective), ch.dtype, ch.numel, ch.variable);
            }
            return out;
          })
      .def_property_readonly("bytes_sent", &BucketCodec::bytes_sent)
      .def_property_readonly("dense_bytes", &BucketCodec::dense_bytes)
      .def_property_readonly("numel", &BucketCodec::numel)
      .def_property_readonly("all_dense", &BucketCodec::all_dense,
                             "Every entry travels uncompressed in the fp32 allreduce.")
      .def("uses_device_path", &BucketCodec::uses_device_path, py::arg("device"),
           "Whether buckets on `device` run the bucket-level CUDA path.")
      .def("encode", &BucketCodec::encode, py::arg("bucket"), py::arg("step"),
           py::arg("measure") = false, py::arg("scale_ratio") = py::none(),
           py::call_guard<py::gil_scoped_release>(),
           "One tensor per channel: the codec's own buffers, reused by the next encode.")
      .def("gather_buffer", &BucketCodec::gather_buffer, py::arg("channel"),
           "The codec's receive buffer for allgather channel `channel` (world_size * numel).")
      .def_property_readonly("measured",
                             [](const BucketCodec& c) { return measure_tuple(c.measured()); })
      .def(
          "decode",
          [](BucketCodec& codec, const at::Tensor& bucket, const std::vector<at::Tensor>& received,
             int64_t step, const std::vector<int64_t>& used) {
            return static_cast<int>(codec.decode(bucket, received, step, used));
          },
          py::arg("bucket"), py::arg("received"), py::arg("step"),
          py::arg("used") = std::vector<int64_t>{}, py::call_guard<py::gil_scoped_release>(),
          "1: written; 0: a rank's bucket was not finite, the bucket is NaN; -1: flags applied "
          "on the device, outcome not read back.");

  py::class_<PowerSgdCodec, std::shared_ptr<PowerSgdCodec>>(m, "PowerSgdCodec")
      .def(py::init([](std::shared_ptr<PowerSgd> method, const std::vector<py::tuple>& entries,
                       const py::object& error_feedback, std::shared_ptr<ErrorFeedback> warm_start,
                       uint64_t seed, int64_t world_size) {
             return std::make_shared<PowerSgdCodec>(std::move(method), to_entries(entries),
                                                    optional_feedback(error_feedback),
                                                    std::move(warm_start), seed, world_size);
           }),
           py::arg("method"), py::arg("entries"), py::arg("error_feedback"), py::arg("warm_start"),
           py::arg("seed"), py::arg("world_size"))
      .def_property_readonly("first_numel", &PowerSgdCodec::first_numel)
      .def_property_readonly("second_numel", &PowerSgdCodec::second_numel)
      .def_property_readonly("bytes_sent", &PowerSgdCodec::bytes_sent)
      .def_property_readonly("dense_bytes", &PowerSgdCodec::dense_bytes)
      .def_property_readonly("numel", &PowerSgdCodec::numel)
      .def_property_readonly("low_rank_matrices", &PowerSgdCodec::low_rank_matrices)
      .def("encode_first", &PowerSgdCodec::encode_first, py::arg("bucket"),
           py::arg("measure") = false, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("measured",
                             [](const PowerSgdCodec& c) { return measure_tuple(c.measured()); })
      .def("encode_second", &PowerSgdCodec::encode_second, py::arg("first"),
           py::call_guard<py::gil_scoped_release>())
      .def(
          "decode",
          [](PowerSgdCodec& codec, const at::Tensor& bucket, const at::Tensor& first,
             const at::Tensor& second) {
            return static_cast<int>(codec.decode(bucket, first, second));
          },
          py::arg("bucket"), py::arg("first"), py::arg("second"),
          py::call_guard<py::gil_scoped_release>());
}
