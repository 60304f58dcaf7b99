// edgeopt's light ExecuTorch runner: the C++ runtime of the executorch wheel (lib/libexecutorch*.so, no torch)
// behind a small C ABI that runtimes/executorch/backend.py drives through ctypes. The process then holds what an
// app embedding ExecuTorch holds (the runtime, XNNPACK, the kernels, the model) plus python and numpy, instead of
// the ~350 MB that `import executorch.runtime` brings in with torch.
//
// Built by `python3 runner/executorch/backend.py --build-light` (scripts/build_et_light.sh from a checkout), which
// links it against the wheel's libraries with --no-as-needed so that their kernel and backend registrations (static
// initializers of libexecutorch_kernels_optimized / _quantized and libexecutorch_backend_xnnpack) run on load.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

namespace executorch {
namespace extension {
namespace threadpool {
// Declared here because the wheel ships libexecutorch_threadpool.so without threadpool.h.
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace threadpool
}  // namespace extension
}  // namespace executorch

using executorch::extension::TensorPtr;
using executorch::extension::make_tensor_ptr;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
namespace tp = executorch::extension::threadpool;

namespace {

struct Handle {
  std::unique_ptr<Module> module;
  std::vector<EValue> outputs;
};

void set_error(char* err, size_t len, const std::string& text) {
  if (err != nullptr && len > 0) {
    std::snprintf(err, len, "%s", text.c_str());
  }
}

}  // namespace

extern "C" {

// Version of this C ABI: backend.py refuses a library built for another.
int eo_et_abi_version() { return 1; }

// Resize the process-wide threadpool (XNNPACK and the optimized kernels share it); 0 on success.
int eo_et_set_threads(int threads) {
  tp::ThreadPool* pool = tp::get_threadpool();
  if (pool == nullptr || threads < 1) return 1;
  return pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads)) ? 0 : 1;
}

int eo_et_get_threads() {
  tp::ThreadPool* pool = tp::get_threadpool();
  return pool == nullptr ? 0 : static_cast<int>(pool->get_thread_count());
}

// Load `method` of the program at `path`; mmap != 0 maps the file instead of reading it. NULL on failure.
void* eo_et_load(const char* path, const char* method, int mmap, char* err, size_t err_len) {
  auto handle = std::make_unique<Handle>();
  handle->module = std::make_unique<Module>(std::string(path), mmap ? Module::LoadMode::Mmap : Module::LoadMode::File);
  Error e = handle->module->load_method(method);
  if (e != Error::Ok) {
    set_error(err, err_len, "load_method(" + std::string(method) + ") failed with executorch error " +
                                std::to_string(static_cast<int>(e)));
    return nullptr;
  }
  return handle.release();
}

void eo_et_free(void* h) { delete static_cast<Handle*>(h); }

// Inputs/outputs of `method` (-1 on error).
int eo_et_num_inputs(void* h, const char* method) {
  auto meta = static_cast<Handle*>(h)->module->method_meta(method);
  return meta.ok() ? static_cast<int>(meta->num_inputs()) : -1;
}

int eo_et_num_outputs(void* h, const char* method) {
  auto meta = static_cast<Handle*>(h)->module->method_meta(method);
  return meta.ok() ? static_cast<int>(meta->num_outputs()) : -1;
}

// Run `method` on n tensors: data[i] (contiguous), dtypes[i] (ExecuTorch ScalarType codes), ndims[i] and the sizes
// of every input one after the other in `sizes`. The data is borrowed, not copied. Returns the output count, or -1
// with `err` filled.
int eo_et_run(void* h, const char* method, int n, void** data, const int* dtypes, const int* ndims,
              const int64_t* sizes, char* err, size_t err_len) {
  auto* handle = static_cast<Handle*>(h);
  std::vector<TensorPtr> tensors;
  std::vector<EValue> inputs;
  tensors.reserve(n);
  inputs.reserve(n);
  const int64_t* at = sizes;
  for (int i = 0; i < n; ++i) {
    std::vector<executorch::aten::SizesType> dims(at, at + ndims[i]);
    at += ndims[i];
    tensors.push_back(make_tensor_ptr(std::move(dims), data[i], static_cast<executorch::aten::ScalarType>(dtypes[i])));
    inputs.emplace_back(*tensors.back());
  }
  auto result = handle->module->execute(method, inputs);
  if (!result.ok()) {
    set_error(err, err_len, "execute(" + std::string(method) + ") failed with executorch error " +
                                std::to_string(static_cast<int>(result.error())));
    return -1;
  }
  handle->outputs = std::move(*result);
  return static_cast<int>(handle->outputs.size());
}

// Output i of the last run: its dtype code, rank, sizes (up to 16 dims) and data pointer, valid until the next run.
// 0 on success, 1 when the output is not a tensor or i is out of range.
int eo_et_output(void* h, int i, int* dtype, int* ndim, int64_t* sizes, void** data, size_t* nbytes) {
  auto* handle = static_cast<Handle*>(h);
  if (i < 0 || static_cast<size_t>(i) >= handle->outputs.size() || !handle->outputs[i].isTensor()) return 1;
  const auto& t = handle->outputs[i].toTensor();
  if (t.dim() > 16) return 1;
  *dtype = static_cast<int>(t.scalar_type());
  *ndim = static_cast<int>(t.dim());
  for (int d = 0; d < t.dim(); ++d) sizes[d] = t.size(d);
  *data = const_cast<void*>(t.const_data_ptr());
  *nbytes = t.nbytes();
  return 0;
}

}  // extern "C"
