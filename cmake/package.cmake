# The Debian package: `cpack -G DEB` (or `ninja package`) in a configured build writes
# blkmirror_VERSION_ARCH.deb with what `cmake --install` installs, under /usr: the binary, the man
# page, the systemd units (in /lib/systemd/system: cmake/install_units.cmake), the docs and the
# example resource file. Its Depends are computed by dpkg-shlibdeps (Debian's dpkg-dev) from the
# binary's libraries. It installs no /etc file, so has no conffiles: the resource files in
# /etc/blkmirror are the operator's. tests/integration/t_package.sh installs it in a container
# booted with systemd and starts a unit from it.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME blkmirror)
set(CPACK_PACKAGE_VENDOR blkmirror)
set(BLKMIRROR_PACKAGE_MAINTAINER
    "Seed a6f2e89e maintainers <maintainers@users.noreply.b-seed-a6f2e89e.example>" CACHE STRING
    "the Maintainer of the Debian package (default: the author of the tree's commits)")
set(CPACK_PACKAGE_CONTACT "${BLKMIRROR_PACKAGE_MAINTAINER}")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "block replication with CRC32C-checked, pipelined acks")
# The long description, in lines of Debian's width (CPack indents them as the control file wants).
set(CPACK_PACKAGE_DESCRIPTION [=[
blkmirror mirrors a volume to one or more replicas block by block over TCP,
RDMA or DPDK: it reads with io_uring into one registered buffer pool,
CRC32C-checks each block once and completes each write at the ack level asked
for (sent, received, or durable on the replica), many blocks in flight per
replica. It serves a replicated volume to NBD clients, resyncs lost replicas
from dirty bitmaps, and fails over with DRBD-like roles and data generations.
.
systemd units run a replica target or a volume per resource file in
/etc/blkmirror; metrics are served to Prometheus.]=])
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
# Install with DESTDIR and the prefix /usr, so that what is configured at install time (the units'
# ExecStart) says /usr and not CPack's staging directory.
set(CPACK_SET_DESTDIR ON)
set(CPACK_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)

# Debian wants a changelog in a native package's docs: one entry, this version, built from this
# tree (the project's history is its git log).
string(TIMESTAMP changelog_date "%a, %d %b %Y %H:%M:%S +0000" UTC)
file(WRITE ${CMAKE_BINARY_DIR}/package/changelog
     "blkmirror (${PROJECT_VERSION}) unstable; urgency=medium\n\n"
     "  * Built with CPack from the blkmirror tree; its history is the tree's git log.\n\n"
     " -- ${BLKMIRROR_PACKAGE_MAINTAINER}  ${changelog_date}\n")
execute_process(COMMAND gzip -9 -n -f ${CMAKE_BINARY_DIR}/package/changelog COMMAND_ERROR_IS_FATAL ANY)
install(FILES ${CMAKE_BINARY_DIR}/package/changelog.gz DESTINATION ${CMAKE_INSTALL_DOCDIR})

set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)  # blkmirror_0.7.0_amd64.deb
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${CMAKE_CURRENT_LIST_DIR}/deb/postinst ${CMAKE_CURRENT_LIST_DIR}/deb/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS OFF)
set(CPACK_DEBIAN_COMPRESSION_TYPE xz)
include(CPack)
