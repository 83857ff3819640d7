// Case files of the simulated-GPU runner (written by tests/gpusim/simcase.py, read here).
//
// A batch is two files: NAME.txt, a text manifest, and NAME.bin, the raw bytes of every input
// buffer. The manifest is a sequence of cases, one directive per line:
//   case ID                        starts a case (ID: [A-Za-z0-9_.-]+)
//   op NAME                        the launcher to call (see ops.h)
//   int KEY VALUE                  an integer parameter (decimal int64)
//   float KEY VALUE                a float parameter (C99 hex float, exact)
//   in NAME OFFSET BYTES SHIFT     an input buffer: BYTES bytes at OFFSET of NAME.bin
//   out NAME BYTES SHIFT           an output buffer of BYTES bytes, first filled with the canary
//   null NAME                      an optional buffer passed as nullptr
//   end                            ends the case
// SHIFT moves the buffer's start that many bytes past the 256-byte-aligned end of its front guard,
// to exercise misaligned pointers.
//
// The runner answers with RESULTS.txt / RESULTS.bin, appended and flushed case by case:
//   case ID
//   launch CODE                    cudaError_t the launcher returned (0 = success)
//   sync CODE                      cudaError_t of cudaDeviceSynchronize after it
//   buf NAME KIND GUARDS INTACT OFFSET BYTES
//       KIND in|out|work, GUARDS 1 when both guard zones still hold the canary, INTACT 1 when an
//       input's bytes are unchanged (always 1 for out/work), and the buffer's final bytes at OFFSET
//       of RESULTS.bin (BYTES = 0 for inputs: their contents are not sent back)
//   end
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace gpusim {

enum class BufferKind { In, Out, Null };

struct BufferSpec {
  std::string name;
  BufferKind kind;
  std::vector<unsigned char> bytes;  // In: the contents
  size_t size = 0;                   // Out: bytes to allocate
  size_t shift = 0;
};

struct CaseSpec {
  std::string id;
  std::string op;
  std::map<std::string, int64_t> ints;
  std::map<std::string, double> floats;
  std::vector<BufferSpec> buffers;
};

// Reads every case of MANIFEST (+ its .bin next to it); exits with a message on malformed input.
std::vector<CaseSpec> read_cases(const std::string& manifest_path);

// Appends results to RESULTS.txt / RESULTS.bin, flushing after every case so that the cases done
// before a simulator crash are kept.
class ResultWriter {
 public:
  explicit ResultWriter(const std::string& prefix);
  ~ResultWriter();
  void begin_case(const std::string& id);
  void codes(int launch, int sync);
  void buffer(const std::string& name, const char* kind, bool guards_ok, bool intact,
              const std::vector<unsigned char>& bytes);
  void end_case();

 private:
  FILE* text_;
  FILE* blob_;
  uint64_t blob_size_ = 0;
};

}  // namespace gpusim
