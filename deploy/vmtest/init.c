/*
 * PID 1 of the vmtest guest (deploy/vmtest.sh builds it static into the
 * initramfs). It loads the modules listed in /modules (virtio and 9p are
 * modules in Debian's kernels), mounts the host's root shared read-only over
 * 9p, switches to it, runs /guest.sh from the initramfs there as a child,
 * reaps every orphan the tests leave, and powers the machine off when the
 * script ends, so qemu exits by itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *fmt, const char *a, const char *b)
{
	dprintf(2, "vmtest-init: ");
	dprintf(2, fmt, a, b);
	dprintf(2, "\n");
}

static void die(const char *what, const char *arg)
{
	say("%s %s failed", what, arg);
	dprintf(2, "vmtest-init: errno %d (%s)\n", errno, strerror(errno));
	sync();
	reboot(RB_POWER_OFF);
	_exit(1);
}

static void mnt(const char *src, const char *dst, const char *type,
		unsigned long flags, const char *data)
{
	mkdir(dst, 0755);
	if (mount(src, dst, type, flags, data) < 0)
		die("mount", dst);
}

static void load_modules(void)
{
	FILE *f = fopen("/modules", "r");
	char line[512];
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		if (!*line)
			continue;
		int fd = open(line, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die("open", line);
		if (syscall(SYS_finit_module, fd, "", 0) < 0 && errno != EEXIST)
			die("finit_module", line);
		close(fd);
	}
	fclose(f);
}

/* The 9p channel appears when virtio_pci's probe of the device has run;
 * module loading does that synchronously, so the first try normally works.
 * A few bounded retries cover a late probe (there is no event to wait for
 * before /sys is the only witness). */
static void mount_root(const char *opts)
{
	for (int i = 0; i < 50; i++) {
		if (mount("root", "/newroot", "9p", MS_RDONLY, opts) == 0)
			return;
		if (errno != ENOENT)
			break;
		struct timespec ts = {0, 100 * 1000 * 1000};
		nanosleep(&ts, NULL);
	}
	die("mount 9p root on", "/newroot");
}

int main(void)
{
	mnt("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	int con = open("/dev/console", O_RDWR);
	if (con >= 0) {
		dup2(con, 0);
		dup2(con, 1);
		dup2(con, 2);
		if (con > 2)
			close(con);
	}
	mnt("proc", "/proc", "proc", 0, NULL);
	mnt("sysfs", "/sys", "sysfs", 0, NULL);
	load_modules();

	mkdir("/newroot", 0755);
	mount_root("trans=virtio,version=9p2000.L,msize=512000,cache=loose");

	/* the script must outlive the initramfs: a tmpfs /run in the new root */
	mnt("tmpfs", "/newroot/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	{
		int in = open("/guest.sh", O_RDONLY), out;
		char buf[65536];
		ssize_t n;
		if (in < 0)
			die("open", "/guest.sh");
		out = open("/newroot/run/vmtest-guest.sh",
			   O_WRONLY | O_CREAT | O_TRUNC, 0755);
		if (out < 0)
			die("create", "/run/vmtest-guest.sh");
		while ((n = read(in, buf, sizeof(buf))) > 0)
			if (write(out, buf, n) != n)
				die("write", "/run/vmtest-guest.sh");
		close(in);
		close(out);
	}
	if (mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL) < 0)
		die("move", "/dev");
	if (mount("/proc", "/newroot/proc", NULL, MS_MOVE, NULL) < 0)
		die("move", "/proc");
	if (mount("/sys", "/newroot/sys", NULL, MS_MOVE, NULL) < 0)
		die("move", "/sys");
	if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 ||
	    chroot(".") < 0 || chdir("/") < 0)
		die("switch to", "/newroot");

	pid_t pid = fork();
	if (pid < 0)
		die("fork", "");
	if (pid == 0) {
		char *argv[] = {"/bin/bash", "/run/vmtest-guest.sh", NULL};
		char *envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:"
				"/usr/bin:/sbin:/bin",
				"HOME=/root", "TERM=dumb", "LANG=C.UTF-8", NULL};
		setsid();
		execve(argv[0], argv, envp);
		die("exec", argv[0]);
	}
	/* PID 1 reaps every orphan until the script itself ends */
	int status = 0;
	for (;;) {
		int st;
		pid_t w = wait(&st);
		if (w == pid) {
			status = st;
			break;
		}
		if (w < 0 && errno != EINTR)
			break;
	}
	char code[32];
	snprintf(code, sizeof(code), "%d",
		 WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
	say("guest script ended with %s%s, powering off", code, "");
	sync();
	reboot(RB_POWER_OFF);
	return 0;
}
