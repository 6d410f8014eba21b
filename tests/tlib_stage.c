/* SPDX-License-Identifier: MIT */
/*
 * Staging for children that run as an unprivileged uid. The build tree may
 * sit under a directory only root can enter (/root, a `mktemp -d`), so such a
 * child cannot load libevsteer from it; handing it CAP_DAC_READ_SEARCH to get
 * there would test a process that is not unprivileged. Instead the binary and
 * the library are copied into a fresh directory anyone can traverse, in the
 * build's own layout (tests/, src/) so its $ORIGIN/../src runpath resolves.
 */
#include "tlib.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int copy_file(const char *from, const char *to, mode_t mode)
{
	int in = open(from, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return -errno;
	int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (out < 0) {
		int err = -errno;
		close(in);
		return err;
	}
	char buf[65536];
	ssize_t n;
	int err = 0;
	while ((n = read(in, buf, sizeof(buf))) > 0) {
		for (ssize_t off = 0; off < n;) {
			ssize_t w = write(out, buf + off, (size_t)(n - off));
			if (w < 0) {
				err = -errno;
				goto done;
			}
			off += w;
		}
	}
	if (n < 0)
		err = -errno;
done:
	close(in);
	/* mkstemp-style modes are umask-filtered: set what we mean */
	if (!err && fchmod(out, mode) < 0)
		err = -errno;
	close(out);
	return err;
}

static const char *base_name(const char *p)
{
	const char *s = strrchr(p, '/');
	return s ? s + 1 : p;
}

void tl_unstage(const char *dir)
{
	char p[4096];
	static const char *const sub[] = {"tests", "src"};
	if (!dir || !*dir)
		return;
	for (size_t i = 0; i < 2; i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, sub[i]);
		DIR *d = opendir(p);
		if (!d)
			continue;
		for (struct dirent *e; (e = readdir(d));) {
			if (e->d_name[0] == '.')
				continue;
			char f[4096 + 256];
			snprintf(f, sizeof(f), "%s/%s", p, e->d_name);
			unlink(f);
		}
		closedir(d);
		rmdir(p);
	}
	rmdir(dir);
}

int tl_stage_self(char *dir, size_t dlen, char *exe, size_t elen,
		  char *libdir, size_t llen)
{
	char self[4096];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return -errno;
	self[n] = '\0';
	/* where the dynamic loader found libevsteer for this very process */
	Dl_info info;
	if (!dladdr((void *)evsteer_version, &info) || !info.dli_fname)
		return -ENOENT;
	char lib[4096];
	if (!realpath(info.dli_fname, lib))
		return -errno;

	/* /tmp, not $TMPDIR: it must be reachable by everyone, and /tmp is
	 * mode 1777 on every Linux system we run on */
	if (snprintf(dir, dlen, "/tmp/evsteer-stage-XXXXXX") >= (int)dlen)
		return -ENAMETOOLONG;
	if (!mkdtemp(dir))
		return -errno;
	int err = 0;
	char p[4096];
	if (chmod(dir, 0755) < 0)
		err = -errno;
	/* chmod after mkdir: a umask of 077 would make them 0700 */
	static const char *const sub[] = {"tests", "src"};
	for (size_t i = 0; i < 2 && !err; i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, sub[i]);
		if (mkdir(p, 0755) < 0 || chmod(p, 0755) < 0)
			err = -errno;
	}
	snprintf(exe, elen, "%s/tests/%s", dir, base_name(self));
	if (!err)
		err = copy_file(self, exe, 0755);
	/* under the soname the binary asks for (NEEDED), which is the name
	 * dladdr reports before symlinks are resolved */
	snprintf(p, sizeof(p), "%s/src/%s", dir, base_name(info.dli_fname));
	if (!err)
		err = copy_file(lib, p, 0755);
	snprintf(libdir, llen, "%s/src", dir);
	if (err) {
		tl_unstage(dir);
		dir[0] = '\0';
	}
	return err;
}
