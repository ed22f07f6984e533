// gradcomp._C: the stateful C++ objects the Python hook drives. Importing it also registers
// torch.ops.gradcomp.* (the op objects are linked into this module).
#include <torch/extension.h>

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "compressors/bucket_codec.h"
#include "compressors/error_feedback.h"
#include "compressors/registry.h"

namespace py = pybind11;

namespace gradcomp {
namespace {

at::Tensor new_payload(const Compressor& c, int64_t numel, const at::Device& device) {
  return at::empty({c.payload_numel(numel)},
                   at::TensorOptions().dtype(c.payload_dtype()).device(device));
}

CompressContext context(int64_t step, uint64_t seed, uint64_t tensor_key) {
  return {seed, step, tensor_key};
}

}  // namespace
}  // namespace gradcomp

PYBIND11_MODULE(_C, m) {
  using namespace gradcomp;
  m.doc() = "gradcomp native core: compressors, error feedback, bucket codec";

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

  py::class_<Compressor, std::shared_ptr<Compressor>>(m, "Compressor")
      .def_property_readonly("name", &Compressor::name)
      .def_property_readonly("spec", &Compressor::spec)
      .def_property_readonly("collective",
                             [](const Compressor& c) { return collective_name(c.collective()); })
      .def_property_readonly("payload_dtype", [](const Compressor& c) { return c.payload_dtype(); })
      .def_property_readonly("lossless", &Compressor::lossless)
      .def("payload_numel", &Compressor::payload_numel, py::arg("numel"))
      .def("payload_bytes", &Compressor::payload_bytes, py::arg("numel"))
      .def(
          "compress",
          [](const Compressor& c, const at::Tensor& input, int64_t step, uint64_t seed,
             uint64_t tensor_key) {
            auto payload = new_payload(c, input.numel(), input.device());
            c.compress(input, payload, context(step, seed, tensor_key));
            return payload;
          },
          py::arg("input"), py::arg("step") = 0, py::arg("seed") = 0, py::arg("tensor_key") = 0,
          "The payload of a flat float32 tensor.")
      .def(
          "compress_with_feedback",
          [](const Compressor& c, const at::Tensor& grad, const at::Tensor& residual, int64_t step,
             uint64_t seed, uint64_t tensor_key) {
            auto payload = new_payload(c, grad.numel(), grad.device());
            c.compress_with_feedback(grad, residual, payload, context(step, seed, tensor_key));
            return payload;
          },
          py::arg("grad"), py::arg("residual"), py::arg("step") = 0, py::arg("seed") = 0,
          py::arg("tensor_key") = 0,
          "residual += grad; payload = C(residual); residual -= D(payload). Returns payload.")
      .def(
          "decompress",
          [](const Compressor& c, const at::Tensor& payload, int64_t numel) {
            auto out = at::zeros({numel}, payload.options().dtype(at::kFloat));
            c.decompress_add(payload, out);
            return out;
          },
          py::arg("payload"), py::arg("numel"), "A new flat float32 tensor D(payload).")
      .def("decompress_add", &Compressor::decompress_add, py::arg("payload"), py::arg("out"),
           "out += D(payload).")
      .def("__repr__",
           [](const Compressor& c) { return "<gradcomp._C.Compressor " + c.spec() + ">"; });

  m.def(
      "make_compressor",
      [](const std::string& name, const std::map<std::string, double>& options) {
        return std::const_pointer_cast<Compressor>(make_compressor(name, options));
      },
      py::arg("name"), py::arg("options") = std::map<std::string, double>{});

  py::class_<ErrorFeedback, std::shared_ptr<ErrorFeedback>>(m, "ErrorFeedback")
      .def(py::init<>())
      .def("__len__", &ErrorFeedback::size)
      .def("squared_norm", &ErrorFeedback::squared_norm)
      .def("state_dict", &ErrorFeedback::state_dict)
      .def("load_state_dict", &ErrorFeedback::load_state_dict, py::arg("state"))
      .def("reset", &ErrorFeedback::reset);

  py::class_<BucketCodec, std::shared_ptr<BucketCodec>>(m, "BucketCodec")
      .def(py::init([](std::shared_ptr<Compressor> compressor,
                       const std::vector<std::tuple<std::string, int64_t, int64_t, bool>>& entries,
                       std::shared_ptr<ErrorFeedback> error_feedback, uint64_t seed) {
             std::vector<BucketEntry> list;
             list.reserve(entries.size());
             for (const auto& [name, offset, numel, compress] : entries) {
               list.push_back({name, offset, numel, compress});
             }
             return std::make_shared<BucketCodec>(std::move(compressor), std::move(list),
                                                  std::move(error_feedback), seed);
           }),
           py::arg("compressor"), py::arg("entries"), py::arg("error_feedback"), py::arg("seed"),
           "entries: (name, offset, numel, compress) per parameter, in bucket order.")
      .def_property_readonly("channels",
                             [](const BucketCodec& codec) {
                               std::vector<std::tuple<std::string, at::ScalarType, int64_t>> out;
                               for (const auto& ch : codec.channels()) {
                                 out.emplace_back(collective_name(ch.collective), ch.dtype,
                                                  ch.numel);
                               }
                               return out;
                             })
      .def_property_readonly("bytes_sent", &BucketCodec::bytes_sent)
      .def_property_readonly("dense_bytes", &BucketCodec::dense_bytes)
      .def_property_readonly("numel", &BucketCodec::numel)
      .def("encode", &BucketCodec::encode, py::arg("bucket"), py::arg("step"),
           py::call_guard<py::gil_scoped_release>())
      .def("decode", &BucketCodec::decode, py::arg("bucket"), py::arg("received"),
           py::arg("world_size"), py::call_guard<py::gil_scoped_release>());
}
