// An LD_PRELOAD library for t_allocations: counts the calls to malloc, calloc and realloc a
// process makes over its life and, at exit, appends the count as one line to the file
// $MALLOC_COUNT_OUT. The calls go on to glibc's own allocator (__libc_malloc and friends).
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>

extern "C" {
void* __libc_malloc(size_t size);
void* __libc_calloc(size_t count, size_t size);
void* __libc_realloc(void* ptr, size_t size);
}

namespace {

std::atomic<unsigned long> calls{0};

__attribute__((destructor)) void Report() {
  const char* path = getenv("MALLOC_COUNT_OUT");
  if (path == nullptr) return;
  char line[32];
  int len = snprintf(line, sizeof(line), "%lu\n", calls.load());
  int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (fd < 0) return;
  (void)!write(fd, line, static_cast<size_t>(len));
  close(fd);
}

}  // namespace

extern "C" {
void* malloc(size_t size) {
  calls.fetch_add(1, std::memory_order_relaxed);
  return __libc_malloc(size);
}
void* calloc(size_t count, size_t size) {
  calls.fetch_add(1, std::memory_order_relaxed);
  return __libc_calloc(count, size);
}
void* realloc(void* ptr, size_t size) {
  calls.fetch_add(1, std::memory_order_relaxed);
  return __libc_realloc(ptr, size);
}
}
