// Compile-time dispatch: turn a runtime value into a compile-time constant or type for the body
// of a lambda, the one mechanism every op uses to pick a template instantiation.
//
//   PESC_BOOL_SWITCH(cond, NAME, [&] { ... NAME ... })           constexpr bool NAME = cond
//   PESC_DTYPE_SWITCH(dtype, TYPES, [&] { ... scalar_t ... })    scalar_t = the storage type of a
//                                                                pesc::DType, taken from TYPES
//                                                                (HostTypes in .cpp, DeviceTypes in .cu)
//   PESC_POW2_SWITCH(value, NAME, [&] { ... NAME ... })          constexpr int NAME = the smallest
//                                                                power of two >= value, 1 to 32
//
// Each expands to an immediately invoked lambda, so the body's return value (e.g. a cudaError_t)
// is the macro's value; every branch instantiates the same body and must return the same type.
// The header is torch-free so that .cu files can include it.
#pragma once

#include "core/dtype.h"

#define PESC_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                   \
    if (COND) {                           \
      constexpr bool NAME = true;         \
      return __VA_ARGS__();               \
    }                                     \
    constexpr bool NAME = false;          \
    return __VA_ARGS__();                 \
  }()

#define PESC_DTYPE_SWITCH(DTYPE, TYPES, ...) \
  [&] {                                      \
    switch (DTYPE) {                         \
      case ::pesc::DType::Float16: {         \
        using scalar_t = TYPES::f16;         \
        return __VA_ARGS__();                \
      }                                      \
      case ::pesc::DType::BFloat16: {        \
        using scalar_t = TYPES::bf16;        \
        return __VA_ARGS__();                \
      }                                      \
      case ::pesc::DType::Float32: break;    \
    }                                        \
    using scalar_t = TYPES::f32;             \
    return __VA_ARGS__();                    \
  }()

#define PESC_POW2_SWITCH(VALUE, NAME, ...) \
  [&] {                                    \
    if ((VALUE) <= 1) {                    \
      constexpr int NAME = 1;              \
      return __VA_ARGS__();                \
    }                                      \
    if ((VALUE) <= 2) {                    \
      constexpr int NAME = 2;              \
      return __VA_ARGS__();                \
    }                                      \
    if ((VALUE) <= 4) {                    \
      constexpr int NAME = 4;              \
      return __VA_ARGS__();                \
    }                                      \
    if ((VALUE) <= 8) {                    \
      constexpr int NAME = 8;              \
      return __VA_ARGS__();                \
    }                                      \
    if ((VALUE) <= 16) {                   \
      constexpr int NAME = 16;             \
      return __VA_ARGS__();                \
    }                                      \
    constexpr int NAME = 32;               \
    return __VA_ARGS__();                  \
  }()
