# Run by `cmake --install` and by CPack (CMakeLists.txt, install(CODE)): writes the systemd units
# from systemd/*.service.in with the paths of the prefix being installed to, and installs them.
# Configuring them at configure time would keep the configured prefix (/usr/local), which CPack
# replaces by /usr. Under the prefix /usr they go to /lib/systemd/system, where Debian 12 keeps
# packaged units (pkg-config --variable=systemdsystemunitdir systemd), as GNUInstallDirs puts
# /usr's configuration in /etc; else to UNIT_DIR under the prefix (or UNIT_DIR when absolute).
# Set by the caller: SRC (source dir), OUT (a build dir to write them in), UNITS (their names),
# UNIT_DIR, BINDIR and DOCDIR (GNUInstallDirs' relative ones).
set(prefix "${CMAKE_INSTALL_PREFIX}")
if(IS_ABSOLUTE "${UNIT_DIR}")
  set(dest "${UNIT_DIR}")
elseif(prefix STREQUAL "/usr" AND UNIT_DIR STREQUAL "lib/systemd/system")
  set(dest "/lib/systemd/system")
else()
  set(dest "${prefix}/${UNIT_DIR}")
endif()
set(CMAKE_INSTALL_FULL_BINDIR "${prefix}/${BINDIR}")
set(CMAKE_INSTALL_FULL_DOCDIR "${prefix}/${DOCDIR}")
foreach(unit ${UNITS})
  configure_file("${SRC}/systemd/${unit}.in" "${OUT}/${unit}" @ONLY)
  file(INSTALL "${OUT}/${unit}" DESTINATION "${dest}")  # file(INSTALL) adds DESTDIR
endforeach()
