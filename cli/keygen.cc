// `blkmirror keygen PATH`: a new random key for peer authentication, mode 0600.
#include <cstdio>

#include "cli/commands.h"
#include "cli/setup.h"
#include "engine/auth.h"

namespace blkmirror::cli {

int RunKeygen(const std::string& path) {
  Status s = engine::WriteKeyFile(path);
  if (!s.ok()) {
    PrintError("keygen", s);
    return kExitFailed;
  }
  std::printf("wrote a new key to %s (mode 0600); give the same file to serve and push "
              "(--key-file)\n",
              path.c_str());
  return kExitOk;
}

}  // namespace blkmirror::cli
