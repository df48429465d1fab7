#include "cli/app.hpp"

int main(int argc, char** argv) { return acmo::cli::run(argc, argv); }
