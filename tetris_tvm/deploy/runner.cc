// tetris-tvm model runner: loads an exported model with the TVM runtime alone (no Python, no
// torch), reads .npy inputs, writes .npy outputs and prints the latency over N runs.
//
//   ./run_model model.so [--runs N] [--warmup W] [--out DIR] input0.npy [input1.npy ...]
//
// The expected inputs (name, shape, dtype) come from inputs.txt beside the model, one line per
// input: "name dtype d0 d1 ...", with -1 for a dynamic dimension. A missing file, a wrong shape
// or a wrong dtype exits non-zero with a message naming the input and what was expected.
// Threads: TVM's runtime uses TVM_NUM_THREADS (default: the cores it may run on).

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Spec {
  std::string name, dtype;
  std::vector<int64_t> shape;  // -1: dynamic
};

struct CpuAlloc {  // 64-byte aligned host memory, as TVM's kernels expect
  void AllocData(DLTensor* t) {
    size_t n = 1;
    for (int i = 0; i < t->ndim; ++i) n *= static_cast<size_t>(t->shape[i]);
    size_t bytes = std::max<size_t>(64, (n * ((t->dtype.bits * t->dtype.lanes + 7) / 8) + 63) / 64 * 64);
    t->data = std::aligned_alloc(64, bytes);
    if (t->data == nullptr) throw Fail("out of memory");
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

struct DType {
  const char* npy;  // numpy descr without the byte-order mark
  const char* name;
  DLDataType dl;
};

const DType kDTypes[] = {
    {"f4", "float32", {kDLFloat, 32, 1}}, {"f8", "float64", {kDLFloat, 64, 1}},
    {"f2", "float16", {kDLFloat, 16, 1}}, {"i4", "int32", {kDLInt, 32, 1}},
    {"i8", "int64", {kDLInt, 64, 1}},     {"u1", "uint8", {kDLUInt, 8, 1}},
    {"i1", "int8", {kDLInt, 8, 1}},       {"b1", "bool", {kDLBool, 8, 1}},
};

const DType& by_npy(const std::string& descr, const std::string& file) {
  std::string d = descr;
  if (!d.empty() && (d[0] == '<' || d[0] == '|' || d[0] == '=')) d = d.substr(1);
  if (!descr.empty() && descr[0] == '>') throw Fail(file + ": big-endian arrays are not supported");
  for (const auto& t : kDTypes)
    if (d == t.npy) return t;
  throw Fail(file + ": unsupported dtype '" + descr + "'");
}

const DType& by_name(const std::string& name) {
  for (const auto& t : kDTypes)
    if (name == t.name) return t;
  throw Fail("unsupported dtype '" + name + "' in inputs.txt");
}

const DType& by_dl(DLDataType dl) {
  for (const auto& t : kDTypes)
    if (t.dl.code == dl.code && t.dl.bits == dl.bits && t.dl.lanes == dl.lanes) return t;
  throw Fail("the model returned an output of an unsupported dtype");
}

std::string shape_text(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << (s[i] < 0 ? std::string("N") : std::to_string(s[i]));
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

// the value of 'key' in a numpy header dict such as {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
std::string header_value(const std::string& h, const std::string& key) {
  size_t k = h.find("'" + key + "'");
  if (k == std::string::npos) throw Fail("no '" + key + "' in the .npy header");
  size_t c = h.find(':', k);
  size_t s = h.find_first_not_of(' ', c + 1);
  size_t e = h[s] == '(' ? h.find(')', s) + 1 : (h[s] == '\'' ? h.find('\'', s + 1) + 1 : h.find_first_of(",}", s));
  return h.substr(s, e - s);
}

ffi::Tensor read_npy(const std::string& file, const Spec& spec) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw Fail("input '" + spec.name + "': cannot open " + file);
  char magic[6];
  in.read(magic, 6);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw Fail("input '" + spec.name + "': " + file + " is not a .npy file");
  unsigned char ver[2];
  in.read(reinterpret_cast<char*>(ver), 2);
  uint32_t hlen = 0;
  if (ver[0] == 1) {
    unsigned char l[2];
    in.read(reinterpret_cast<char*>(l), 2);
    hlen = l[0] | (l[1] << 8);
  } else {
    unsigned char l[4];
    in.read(reinterpret_cast<char*>(l), 4);
    hlen = l[0] | (l[1] << 8) | (l[2] << 16) | (static_cast<uint32_t>(l[3]) << 24);
  }
  std::string header(hlen, ' ');
  in.read(&header[0], hlen);
  if (!in) throw Fail("input '" + spec.name + "': " + file + " has a truncated header");
  std::string descr = header_value(header, "descr");
  descr = descr.substr(1, descr.size() - 2);
  if (header_value(header, "fortran_order") != "False") throw Fail("input '" + spec.name + "': " + file + " is Fortran-ordered; save it C-ordered");
  std::string st = header_value(header, "shape");
  std::vector<int64_t> shape;
  std::string num;
  for (char ch : st) {
    if (ch >= '0' && ch <= '9') num += ch;
    else if (!num.empty()) { shape.push_back(std::stoll(num)); num.clear(); }
  }
  const DType& dt = by_npy(descr, file);
  if (dt.name != spec.dtype)
    throw Fail("input '" + spec.name + "': expected dtype " + spec.dtype + ", got " + dt.name + " in " + file);
  bool ok = shape.size() == spec.shape.size();
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = spec.shape[i] < 0 || spec.shape[i] == shape[i];
  if (!ok)
    throw Fail("input '" + spec.name + "': expected shape " + shape_text(spec.shape) + " " + spec.dtype + ", got " + shape_text(shape) + " in " + file);
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::ShapeView(shape.data(), shape.size()), dt.dl, DLDevice{kDLCPU, 0});
  size_t n = 1;
  for (auto d : shape) n *= static_cast<size_t>(d);
  in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(n * ((dt.dl.bits + 7) / 8)));
  if (!in) throw Fail("input '" + spec.name + "': " + file + " holds fewer values than its shape says");
  return t;
}

void write_npy(const std::string& file, const ffi::Tensor& t) {
  const DType& dt = by_dl(t.dtype());
  std::vector<int64_t> shape(t.shape().begin(), t.shape().end());
  std::string st = "(";
  for (size_t i = 0; i < shape.size(); ++i) st += (i ? ", " : "") + std::to_string(shape[i]);
  st += shape.size() == 1 ? ",)" : ")";
  std::string header = std::string("{'descr': '") + (dt.npy[0] == 'u' || dt.npy[0] == 'b' || std::strcmp(dt.npy, "i1") == 0 ? "|" : "<") + dt.npy + "', 'fortran_order': False, 'shape': " + st + ", }";
  size_t total = 10 + header.size() + 1;
  header += std::string((64 - total % 64) % 64, ' ') + "\n";
  std::ofstream out(file, std::ios::binary);
  if (!out) throw Fail("cannot write " + file);
  out.write("\x93NUMPY\x01\x00", 8);
  uint16_t hl = static_cast<uint16_t>(header.size());
  char l[2] = {static_cast<char>(hl & 0xff), static_cast<char>(hl >> 8)};
  out.write(l, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  size_t n = 1;
  for (auto d : shape) n *= static_cast<size_t>(d);
  out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(n * ((t.dtype().bits + 7) / 8)));
}

std::vector<Spec> read_specs(const std::string& model) {
  std::string dir = model.find('/') == std::string::npos ? "." : model.substr(0, model.rfind('/'));
  std::ifstream in(dir + "/inputs.txt");
  if (!in) throw Fail("cannot open " + dir + "/inputs.txt (written beside the model by export_bundle)");
  std::vector<Spec> specs;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream ls(line);
    Spec s;
    ls >> s.name >> s.dtype;
    by_name(s.dtype);
    int64_t d;
    while (ls >> d) s.shape.push_back(d);
    specs.push_back(s);
  }
  return specs;
}

void flatten(const ffi::Any& out, std::vector<ffi::Tensor>* outs) {
  if (auto t = out.as<ffi::Tensor>()) {
    outs->push_back(*t);
  } else if (auto arr = out.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *arr) flatten(item, outs);
  } else {
    throw Fail("the model returned something other than tensors");
  }
}

int usage(const char* argv0) {
  std::cerr << "usage: " << argv0 << " model.so [--runs N] [--warmup W] [--out DIR] input.npy ...\n"
            << "  runs the model on the .npy inputs (order of inputs.txt), writes output<i>.npy to\n"
            << "  DIR (default .), prints the median latency of N runs (default 10)\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") return usage(argv[0]);
  std::string model = argv[1], out_dir = ".";
  int runs = 10, warmup = 2;
  std::vector<std::string> files;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--runs" || a == "--warmup" || a == "--out") && i + 1 < argc) {
      std::string v = argv[++i];
      if (a == "--out") out_dir = v;
      else (a == "--runs" ? runs : warmup) = std::max(0, std::atoi(v.c_str()));
    } else if (a.rfind("--", 0) == 0) {
      return usage(argv[0]);
    } else {
      files.push_back(a);
    }
  }
  try {
    std::vector<Spec> specs = read_specs(model);
    if (files.size() != specs.size()) {
      std::string names;
      for (const auto& s : specs) names += (names.empty() ? "" : ", ") + s.name + " " + shape_text(s.shape) + " " + s.dtype;
      throw Fail("expected " + std::to_string(specs.size()) + " input files (" + names + "), got " + std::to_string(files.size()));
    }
    std::vector<ffi::Tensor> inputs;
    for (size_t i = 0; i < files.size(); ++i) inputs.push_back(read_npy(files[i], specs[i]));
    // dlopen searches the library path for a bare file name: make it a path
    ffi::Module lib = ffi::Module::LoadFromFile(model.find('/') == std::string::npos ? "./" + model : model);
    ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
    const int pooled = 2;
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, pooled);
    ffi::Function main_fn = vm->GetFunction("main").value();
    auto call = [&]() {
      std::vector<ffi::AnyView> args(inputs.begin(), inputs.end());
      ffi::Any result;
      main_fn.CallPacked(args.data(), static_cast<int>(args.size()), &result);
      return result;
    };
    ffi::Any result = call();
    for (int i = 0; i < warmup; ++i) call();
    std::vector<double> ms;
    for (int i = 0; i < runs; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      call();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::vector<ffi::Tensor> outs;
    flatten(result, &outs);
    for (size_t i = 0; i < outs.size(); ++i) write_npy(out_dir + "/output" + std::to_string(i) + ".npy", outs[i]);
    const char* threads = std::getenv("TVM_NUM_THREADS");
    std::sort(ms.begin(), ms.end());
    std::printf("outputs: %zu written to %s\n", outs.size(), out_dir.c_str());
    if (!ms.empty())
      std::printf("latency: median %.3f ms, min %.3f ms over %d runs; threads: %s (cores: %u)\n",
                  ms[ms.size() / 2], ms.front(), runs, threads ? threads : "default",
                  std::thread::hardware_concurrency());
  } catch (const Fail& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
