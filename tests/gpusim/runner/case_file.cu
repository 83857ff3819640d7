// Reader of the runner's case manifests and writer of its results (formats in case_file.h).
#include "case_file.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace gpusim {
namespace {

[[noreturn]] void fail(const std::string& path, int line, const std::string& what) {
  std::fprintf(stderr, "runner: %s:%d: %s\n", path.c_str(), line, what.c_str());
  std::exit(2);
}

std::string blob_path(const std::string& manifest_path) {
  const std::string suffix = ".txt";
  if (manifest_path.size() < suffix.size() ||
      manifest_path.compare(manifest_path.size() - suffix.size(), suffix.size(), suffix) != 0) {
    fail(manifest_path, 0, "the manifest's name must end in .txt");
  }
  return manifest_path.substr(0, manifest_path.size() - suffix.size()) + ".bin";
}

}  // namespace

std::vector<CaseSpec> read_cases(const std::string& manifest_path) {
  std::ifstream text(manifest_path);
  if (!text) fail(manifest_path, 0, "cannot open");
  const std::string bin = blob_path(manifest_path);
  std::ifstream blob(bin, std::ios::binary);
  if (!blob) fail(bin, 0, "cannot open");

  std::vector<CaseSpec> cases;
  CaseSpec* current = nullptr;
  std::string line;
  for (int number = 1; std::getline(text, line); ++number) {
    std::istringstream in(line);
    std::string word;
    if (!(in >> word)) continue;
    if (word == "case") {
      cases.emplace_back();
      current = &cases.back();
      if (!(in >> current->id)) fail(manifest_path, number, "case without an id");
      continue;
    }
    if (current == nullptr) fail(manifest_path, number, "directive outside a case: " + word);
    std::string name;
    if (word == "end") {
      if (current->op.empty()) fail(manifest_path, number, "case " + current->id + " has no op");
      current = nullptr;
    } else if (word == "op") {
      if (!(in >> current->op)) fail(manifest_path, number, "op without a name");
    } else if (word == "int") {
      int64_t value;
      if (!(in >> name >> value)) fail(manifest_path, number, "malformed int");
      current->ints[name] = value;
    } else if (word == "float") {
      std::string value;
      if (!(in >> name >> value)) fail(manifest_path, number, "malformed float");
      char* end = nullptr;
      current->floats[name] = std::strtod(value.c_str(), &end);
      if (end == value.c_str() || *end != '\0') fail(manifest_path, number, "malformed float value " + value);
    } else if (word == "in") {
      BufferSpec b{};
      uint64_t offset = 0;
      if (!(in >> b.name >> offset >> b.size >> b.shift)) fail(manifest_path, number, "malformed in");
      b.kind = BufferKind::In;
      b.bytes.resize(b.size);
      blob.seekg(static_cast<std::streamoff>(offset));
      if (!blob.read(reinterpret_cast<char*>(b.bytes.data()), static_cast<std::streamsize>(b.size)))
        fail(bin, 0, "short read for buffer " + b.name + " of case " + current->id);
      current->buffers.push_back(std::move(b));
    } else if (word == "out") {
      BufferSpec b{};
      if (!(in >> b.name >> b.size >> b.shift)) fail(manifest_path, number, "malformed out");
      b.kind = BufferKind::Out;
      current->buffers.push_back(std::move(b));
    } else if (word == "null") {
      BufferSpec b{};
      if (!(in >> b.name)) fail(manifest_path, number, "malformed null");
      b.kind = BufferKind::Null;
      current->buffers.push_back(std::move(b));
    } else {
      fail(manifest_path, number, "unknown directive " + word);
    }
  }
  if (current != nullptr) fail(manifest_path, 0, "case " + current->id + " is not closed by end");
  return cases;
}

ResultWriter::ResultWriter(const std::string& prefix)
    : text_(std::fopen((prefix + ".txt").c_str(), "w")), blob_(std::fopen((prefix + ".bin").c_str(), "wb")) {
  if (text_ == nullptr || blob_ == nullptr) {
    std::fprintf(stderr, "runner: cannot write %s.{txt,bin}\n", prefix.c_str());
    std::exit(2);
  }
}

ResultWriter::~ResultWriter() {
  std::fclose(text_);
  std::fclose(blob_);
}

void ResultWriter::begin_case(const std::string& id) { std::fprintf(text_, "case %s\n", id.c_str()); }

void ResultWriter::codes(int launch, int sync) { std::fprintf(text_, "launch %d\nsync %d\n", launch, sync); }

void ResultWriter::buffer(const std::string& name, const char* kind, bool guards_ok, bool intact,
                          const std::vector<unsigned char>& bytes) {
  std::fprintf(text_, "buf %s %s %d %d %llu %zu\n", name.c_str(), kind, guards_ok ? 1 : 0, intact ? 1 : 0,
               static_cast<unsigned long long>(blob_size_), bytes.size());
  if (!bytes.empty()) std::fwrite(bytes.data(), 1, bytes.size(), blob_);
  blob_size_ += bytes.size();
}

void ResultWriter::end_case() {
  std::fprintf(text_, "end\n");
  std::fflush(blob_);  // the bytes first: a case whose "end" is on disk is complete
  std::fflush(text_);
}

}  // namespace gpusim
