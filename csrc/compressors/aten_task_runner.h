// A kernels::cpu::TaskRunner backed by torch's intra-op thread pool (at::parallel_for).
#pragma once

#include "kernels/cpu/task_runner.h"

namespace gradcomp {

const kernels::cpu::TaskRunner& aten_task_runner();

}  // namespace gradcomp
